import numpy as np
import pytest

from fmmm.envs.seeds import episode_seed
from fmmm.eval.rollout import check_action, run_episode, wilson_interval
from fmmm.policies.random import RandomPolicy


@pytest.mark.parametrize(
    "successes, trials, low, high",
    [
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (48, 50, 0.8654, 0.9890),
    ],
)
def test_wilson_interval_matches_reference_values(successes, trials, low, high):
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)


def test_bad_actions_are_named():
    with pytest.raises(ValueError, match="shape"):
        check_action(np.zeros(6), 7)
    with pytest.raises(ValueError, match="non-finite"):
        check_action(np.full(7, np.nan), 7)


def test_random_policy_repeats_after_reseeding():
    policy = RandomPolicy(seed=0)
    policy.seed(5)
    first = [policy.act({}) for _ in range(3)]
    policy.seed(5)
    assert all(np.array_equal(a, b) for a, b in zip(first, [policy.act({}) for _ in range(3)]))
    assert first[0].dtype == np.float32 and np.all(np.abs(first[0]) <= 1)


def test_scripted_episode_succeeds_and_records_every_step():
    import fmmm.envs
    from fmmm.policies.factory import load_policy

    env = fmmm.envs.make_env("pick_place", render=False)
    policy = load_policy("scripted")(env)
    steps = []
    result = run_episode(
        env,
        policy,
        episode_seed("pick_place", 0, 0, "eval"),
        0,
        None,
        lambda o, a, i: steps.append(i["is_success"]),
    )
    assert result["success"] and result["success_end"]
    assert result["length"] == len(steps) and steps[-1]
    assert result["first_success_step"] == steps.index(True)


def test_lockstep_envs_give_the_rows_of_one_env_at_a_time():
    from fmmm.eval.rollout import _eval_lockstep, _init_eval_worker

    items = [("pick_place", index) for index in range(5)]
    _init_eval_worker("random", 2, None, None)
    lockstep = sorted(_eval_lockstep(items, 3), key=lambda row: row["episode"])
    one_at_a_time = list(_eval_lockstep(items, 1))
    for rows in (lockstep, one_at_a_time):
        for row in rows:
            row.pop("env_time"), row.pop("policy_time")
    assert [row["episode"] for row in lockstep] == list(range(5))
    assert lockstep == one_at_a_time
