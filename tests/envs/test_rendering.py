"""Renderers across fork: gymnasium's async vector env forks workers from a process that rendered."""

import os
import signal
import subprocess
import sys

import pytest

PARENT = """
import sys

import gymnasium as gym

import fmmm.envs

env = gym.make("fmmm/PickPlace-v0")
env.reset(seed=0)
if sys.argv[1] == "close":
    env.close()
vec = gym.make_vec("fmmm/PickPlace-v0", num_envs=2, vectorization_mode="async")
try:
    vec.reset(seed=0)
    observation, *_ = vec.step(vec.action_space.sample())
    print("stepped", observation["agentview"].shape)
except RuntimeError as exc:
    print("refused:", exc)
finally:
    vec.close()
"""


def run_parent(tmp_path, parent_env: str) -> str:
    """Run PARENT in a fresh interpreter; a hang fails the test after 120 s (workers killed too)."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    process = subprocess.Popen(
        [sys.executable, str(script), parent_env],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the async vector env hung")
    assert process.returncode == 0, err
    return out


def test_async_vector_env_resets_and_steps_after_an_env_closed_in_the_parent(tmp_path):
    assert "stepped (2, 64, 64, 3)" in run_parent(tmp_path, "close")


def test_fork_while_a_renderer_lives_fails_with_the_fix_instead_of_hanging(tmp_path):
    out = run_parent(tmp_path, "keep")
    assert "refused: this process was forked while its parent had a live EGL renderer" in out
    assert "'context': 'spawn'" in out
