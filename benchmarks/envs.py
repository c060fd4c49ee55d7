"""Env throughput beside the physics limit: control steps/s with and without rendering, raw
`mujoco.mj_step` on the same model replaying the same controls, and renderer frames/s.

    python benchmarks/envs.py [--steps 400] [--tasks pick_place push] [--image-size 64]

The physics limit of one control step is `n_substeps` calls of `mj_step` with the controls the
env computed; "efficiency" is physics time / env time of a control step on the same trajectory
(1.0 = no overhead; the median over steps).
The env and the physics replica alternate step by step, so machine load affects both alike;
"overhead us" is the env's own time per control step (IK, observation, success check).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np


def _bench_task(task: str, steps: int, image_size: int, repeats: int) -> dict[str, float]:
    import mujoco

    from fmmm.envs import make_env

    env = make_env(task, render=False, terminate_on_success=False)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.0, 1.0, size=(steps, 7)).astype(np.float32)

    # Interleaved: each control step of the env is followed by the same physics work on a replica
    # (same initial state, same controls), so both see the same machine load.
    env_times, physics_times, per_step = [], [], []
    for _ in range(repeats):
        env.reset(seed=0)
        replica = mujoco.MjData(env.model)
        replica.qpos[:], replica.mocap_pos[:] = env.data.qpos, env.data.mocap_pos
        mujoco.mj_forward(env.model, replica)
        env_time = physics_time = 0.0
        for i in range(steps):
            start = time.perf_counter()
            env.step(actions[i])
            middle = time.perf_counter()
            replica.ctrl[:] = env.data.ctrl
            mujoco.mj_step(env.model, replica, nstep=env.n_substeps)
            end = time.perf_counter()
            env_time += middle - start
            physics_time += end - middle
            per_step.append((middle - start, end - middle))
        if not np.allclose(replica.qpos, env.data.qpos, atol=1e-9):
            raise RuntimeError("the physics replica diverged from the env: the comparison is void")
        env_times.append(env_time)
        physics_times.append(physics_time)
    env.close()

    rendered = make_env(task, render=True, image_size=image_size, terminate_on_success=False)
    rendered.reset(seed=0)
    start = time.perf_counter()
    for i in range(steps):
        rendered.step(actions[i])
    render_time = time.perf_counter() - start

    renderer = mujoco.Renderer(rendered.model, image_size, image_size)
    frames = 4 * steps
    start = time.perf_counter()
    for i in range(frames):
        renderer.update_scene(rendered.data, camera="agentview" if i % 2 else "wrist")
        renderer.render()
    frame_time = time.perf_counter() - start
    renderer.close()
    rendered.close()

    env_time, physics_time = min(env_times), min(physics_times)
    # Per-step medians: robust to the preemption spikes of a busy machine.
    env_step, physics_step = np.array(per_step).T
    efficiency = float(np.median(physics_step / env_step))
    overhead = float(np.median(env_step - physics_step))
    return {
        "n_substeps": env.n_substeps,
        "env_state_only": steps / env_time,
        "physics_limit": steps / physics_time,
        "efficiency": efficiency,
        "env_rendered": steps / render_time,
        "renderer_fps": frames / frame_time,
        "mj_step_us": 1e6 * physics_time / (steps * env.n_substeps),
        "overhead_us": 1e6 * overhead,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="control steps per measurement")
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args(argv)

    # fmmm.envs first: it picks the headless GL backend, which mujoco reads when first imported.
    from fmmm.envs import task_names
    from fmmm.envs.env import mujoco

    tasks = args.tasks or task_names()
    unknown = sorted(set(tasks) - set(task_names()))
    if unknown or args.steps < 1 or args.repeats < 1:
        print(
            f"error: unknown tasks {unknown}"
            if unknown
            else "error: --steps and --repeats must be >= 1",
            file=sys.stderr,
        )
        return 2
    print(
        f"mujoco {mujoco.__version__}, python {platform.python_version()}, {args.steps} control steps, images {args.image_size}x{args.image_size}"
    )
    print(
        "| task | substeps | env steps/s (state only) | physics limit steps/s | efficiency | env steps/s (rendered) | renderer frames/s | mj_step us |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for task in tasks:
        r = _bench_task(task, args.steps, args.image_size, args.repeats)
        print(
            f"| {task} | {r['n_substeps']} | {r['env_state_only']:.0f} | {r['physics_limit']:.0f} | "
            f"{r['efficiency']:.2f} | {r['env_rendered']:.0f} | {r['renderer_fps']:.0f} | {r['mj_step_us']:.1f} | {r['overhead_us']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
