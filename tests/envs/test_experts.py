"""Scripted experts solve every task from seeded initial states; random actions do not."""

from __future__ import annotations

import numpy as np
import pytest

from fmmm.envs import make_env, task_names
from fmmm.envs.experts import ScriptedExpert
from fmmm.policies.base import Policy


def _success_rate(task: str, seeds: range, policy: str) -> float:
    env = make_env(task, render=False)
    expert = ScriptedExpert(env)
    successes = 0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        expert.reset()
        env.action_space.seed(seed)
        while True:
            action = expert.act(obs) if policy == "expert" else env.action_space.sample()
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        successes += info["is_success"]
    env.close()
    return successes / len(seeds)


def test_expert_implements_the_policy_interface():
    env = make_env("reach", render=False)
    expert = ScriptedExpert(env)
    assert isinstance(expert, Policy)
    obs, _ = env.reset(seed=0)
    action = expert.act(obs)
    assert action.shape == (7,) and action.dtype == np.float32
    assert np.all(np.abs(action) <= 1.0)


@pytest.mark.parametrize("task", task_names())
def test_scripted_expert_solves_unseen_seeds(task):
    assert _success_rate(task, range(1000, 1005), "expert") >= 0.8


@pytest.mark.parametrize("task", task_names())
def test_random_actions_rarely_succeed(task):
    assert _success_rate(task, range(6), "random") <= 1 / 6


@pytest.mark.slow
@pytest.mark.parametrize("task", task_names())
def test_scripted_expert_succeeds_on_50_evaluation_seeds(task):
    assert _success_rate(task, range(50), "expert") >= 0.95


def test_expert_rejects_foreign_envs():
    import gymnasium as gym

    with pytest.raises(ValueError, match="TabletopEnv"):
        ScriptedExpert(gym.make("CartPole-v1"))
