"""Session-wide test setup."""

import importlib.util

# Importing triton (torch.compile, torchvision.ops, open_clip pull it in) after a MuJoCo EGL context
# exists segfaults the process; load it first so test order cannot matter.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
