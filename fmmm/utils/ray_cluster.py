"""Joining a Ray cluster (the optional `ray` extra): an existing one by address, else a local one.

Curation (`fmmm.data ... executor=ray`) and evaluation (`fmmm.eval --executor ray`) both run their
work as Ray tasks or actors; this module is the one place that starts or joins the cluster and
says how worker processes are set up.
"""

from __future__ import annotations

import os
from typing import Any

OBJECT_STORE_BYTES = 200 * 1024**2  # a local cluster's object store: results here are small


def require_ray() -> Any:
    """`import ray`, or a ValueError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ValueError(
            "executor=ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')"
        ) from exc
    return ray


def connect(address: str = "") -> Any:
    """The `ray` module, connected: to the cluster at `address`, else to a new local cluster.

    A process already connected (a test fixture, a user's own `ray.init`) keeps its connection.
    """
    ray = require_ray()
    if not ray.is_initialized():
        if address:
            _require_reachable(address)
            ray.init(address=address, runtime_env=worker_runtime_env(), log_to_driver=False)
        else:
            ray.init(
                runtime_env=worker_runtime_env(),
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                log_to_driver=False,
            )
    return ray


def _require_reachable(address: str, seconds: float = 5.0) -> None:
    """A one-line error for a `host:port` nobody listens on (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as exc:
        raise ValueError(f"no Ray cluster at {address}: {exc.strerror or exc}") from None


def worker_runtime_env() -> dict[str, Any]:
    """Environment of Ray workers: one BLAS thread each (the tasks are the parallelism) and the
    driver's MuJoCo GL backend (EGL on a headless GPU node unless the driver chose otherwise)."""
    env_vars = {
        name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    env_vars["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", "egl")
    if "PYOPENGL_PLATFORM" in os.environ:
        env_vars["PYOPENGL_PLATFORM"] = os.environ["PYOPENGL_PLATFORM"]
    return {"env_vars": env_vars}
