import pytest


@pytest.fixture(scope="session")
def reach_demos(tmp_path_factory):
    """Four scripted reach demonstrations on disk (the real collection path)."""
    from fmmm.collect import collect

    root = tmp_path_factory.mktemp("demos") / "reach"
    collect("reach", 4, root, seed=0, workers=1, progress=False)
    return root
