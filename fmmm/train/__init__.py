"""Training: the reusable `Trainer` (trainer.py), checkpoints, spike guard, data streams.

`python -m fmmm.train CONFIG [key=value ...]` dispatches on the config's top-level `kind` through
`fmmm.train.runners.RUNNERS`. Submodules import torch; this package file does not.
"""
