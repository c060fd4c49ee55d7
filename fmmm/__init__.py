"""fmmm: multimodal and robotics foundation models, from tokenizers to VLA policies in MuJoCo.

Importing the package is cheap on purpose: torch, mujoco and friends are imported by the
submodules that need them.
"""

__version__ = "0.1.0"
