"""A small real demonstration dataset shared by the dataset tests (collected once per session)."""

from pathlib import Path

import pytest

DEMO_TASK = "pick_place"
DEMO_EPISODES = 3


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fmmm.collect import collect

    out = tmp_path_factory.mktemp("demos") / "pick_place"
    collect(DEMO_TASK, DEMO_EPISODES, out, seed=0, workers=1, progress=False)
    return out
