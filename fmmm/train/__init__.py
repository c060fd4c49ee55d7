"""Training: `python -m fmmm.train CONFIG [key=value ...]` dispatches on the config's `kind`.

trainer.py (the reusable `Trainer`), checkpoint.py, spike.py, optim.py, metrics.py, data.py
(deterministic mixture streams, random access to shards), samples.py (samples -> batches),
recipes (pretrain.py, vla.py, posttrain.py: one module per `kind`), runners.py (kind -> recipe). Submodules import torch;
this package file does not.
"""
