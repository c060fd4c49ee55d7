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


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of 2 CPUs shared by the executor=ray tests; yields its address, which
    subprocesses pass as ray_address to join it."""
    import ray

    import fmmm.envs  # noqa: F401  (picks MUJOCO_GL, which the Ray workers then inherit)
    from fmmm.utils.ray_cluster import OBJECT_STORE_BYTES, worker_runtime_env

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,
        runtime_env=worker_runtime_env(),
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
