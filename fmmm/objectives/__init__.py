"""Training objectives: modules returning `{"loss": ..., <named scalars>}` (open_clip's loss.py).

contrastive.py (InfoNCE, SigLIP), autoregressive.py (next-token), masked.py (masked patches),
dpo.py (preference optimisation). Import the submodule you need; this file imports nothing heavy.
"""
