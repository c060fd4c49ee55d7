"""Env throughput beside the physics limit: control steps/s with and without rendering, raw
`mujoco.mj_step` on the same model replaying the same controls, and renderer frames/s.

    python benchmarks/envs.py [--steps 400] [--tasks pick_place push] [--image-size 64]

With `--eval POLICY`, evaluation throughput by `--num-envs` instead: `python -m fmmm.eval` run as
a user runs it, once per `--num-envs` value per round, interleaved (1, 2, 1, 2, ...), reporting
episodes/s (the evaluation's own figure: the rollouts, after loading the policy and making the
envs), the whole command's wall time, and each value's ratio to the first value's in its round:

    python benchmarks/envs.py --eval runs/quickstart --tasks reach --episodes 50 --num-envs 1 2

The physics limit of one control step is `n_substeps` calls of `mj_step` with the controls the
env computed; "efficiency" is physics time / env time of a control step on the same trajectory
(1.0 = no overhead; the median over steps).
The env and the physics replica alternate step by step, so machine load affects both alike;
"overhead us" is the env's own time per control step (IK, observation, success check).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def _eval_throughput(
    policy: str, task: str, episodes: int, num_envs: list[int], rounds: int, seed: int
) -> int:
    """Run `python -m fmmm.eval` per --num-envs value and round, interleaved; print a table."""
    print(f"policy {policy}, task {task}, {episodes} episodes, seed {seed}, {os.cpu_count()} CPUs")
    print(
        "| round | num-envs | episodes/s | ratio | rollout s | command s | success | load (1 min) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for round_index in range(rounds):
        first_rate = None
        for envs in num_envs:
            with tempfile.TemporaryDirectory() as out:
                command = [
                    *(sys.executable, "-m", "fmmm.eval", "--policy", policy, "--task", task),
                    *("--episodes", str(episodes), "--seed", str(seed)),
                    *("--num-envs", str(envs), "--out", out),
                ]
                start = time.perf_counter()
                run = subprocess.run(command, capture_output=True, text=True)
                command_seconds = time.perf_counter() - start
                if run.returncode != 0:
                    print(run.stderr, file=sys.stderr)
                    return run.returncode
                results = json.loads((Path(out) / "results.json").read_text())
            timings = results["timings"]
            rate = timings["episodes_per_second"]
            first_rate = first_rate or rate
            print(
                f"| {round_index + 1} | {envs} | {rate:.2f} | {rate / first_rate:.2f} | "
                f"{timings['wall_seconds']:.1f} | {command_seconds:.1f} | "
                f"{results['summary'][task]['success_rate']:.0%} | {os.getloadavg()[0]:.2f} |",
                flush=True,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="control steps per measurement")
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    parser.add_argument(
        "--eval", metavar="POLICY", help="evaluation throughput of POLICY by --num-envs instead"
    )
    parser.add_argument("--episodes", type=int, default=50, help="--eval: episodes per run")
    parser.add_argument(
        "--num-envs", type=int, nargs="+", default=[1, 2], help="--eval: values to compare"
    )
    parser.add_argument("--rounds", type=int, default=2, help="--eval: interleaved rounds")
    parser.add_argument("--seed", type=int, default=0, help="--eval: base seed")
    args = parser.parse_args(argv)
    if args.eval is not None:
        if not args.tasks or len(args.tasks) != 1:
            print("error: --eval takes one task in --tasks", file=sys.stderr)
            return 2
        return _eval_throughput(
            args.eval, args.tasks[0], args.episodes, args.num_envs, args.rounds, args.seed
        )

    # fmmm.envs first: it picks the headless GL backend, which mujoco reads when first imported.
    from fmmm.envs import suite_task_names, task_names
    from fmmm.envs.env import mujoco

    tasks = args.tasks or suite_task_names()
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
