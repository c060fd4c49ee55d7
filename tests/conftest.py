"""Session-wide test setup."""

import importlib.util

import pytest

# Importing triton (torch.compile, torchvision.ops, open_clip pull it in) after a MuJoCo EGL context
# exists segfaults the process; load it first so test order cannot matter.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401


@pytest.fixture(scope="session")
def reach_demos(tmp_path_factory):
    """Four scripted reach demonstrations on disk (the real collection path)."""
    from fmmm.collect import collect

    root = tmp_path_factory.mktemp("demos") / "reach"
    collect("reach", 4, root, seed=0, workers=1, progress=False)
    return root
