"""Training: `python -m fmmm.train CONFIG [key=value ...]` dispatches on the config's `kind`.

trainer.py (the reusable `Trainer`), checkpoint.py, spike.py, optim.py, metrics.py, data.py
(deterministic mixture streams, random access to shards), samples.py (samples -> batches),
pretrain.py (the `pretrain` kind), runners.py (the kind registry). Submodules import torch;
this package file does not.
"""
