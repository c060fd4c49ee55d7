import numpy as np
import pytest

from fmmm.envs.seeds import episode_seed
from fmmm.eval.env_slots import check_action
from fmmm.eval.rollout import LockstepWorker, evaluate, run_episode
from fmmm.eval.speed import measure_control_rate
from fmmm.eval.stats import wilson_interval
from fmmm.policies.base import BatchPolicy
from fmmm.policies.factory import policy_registry
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
    items = [("pick_place", index) for index in range(5)]
    worker = LockstepWorker("random", 2)
    lockstep = sorted(worker.rows(items, 3), key=lambda row: row["episode"])
    one_at_a_time = list(worker.rows(items, 1))
    worker.close()
    for rows in (lockstep, one_at_a_time):
        for row in rows:
            row.pop("env_time"), row.pop("policy_time")
    assert [row["episode"] for row in lockstep] == list(range(5))
    assert lockstep == one_at_a_time


def _without_timings(results: dict) -> dict:
    return {key: value for key, value in results.items() if key != "timings"}


def test_scripted_results_do_not_depend_on_the_number_of_envs():
    one = evaluate("scripted", ["reach", "lift"], 4, base_seed=1, num_envs=1, progress=False)
    three = evaluate("scripted", ["reach", "lift"], 4, base_seed=1, num_envs=3, progress=False)
    assert three["timings"]["num_envs"] == 3
    assert _without_timings(one) == _without_timings(three)
    assert one["summary"]["reach"]["success_rate"] == 1.0


class _BatchPolicy:
    """Pushes down with an open gripper; records every call, so tests can see the batching."""

    ACTION = np.array([0, 0, -1, 0, 0, 0, -1], dtype=np.float32)

    def __init__(self, created: list):
        created.append(self)
        self.batches: list[list[int]] = []
        self.resets: list[int] = []
        self.single_calls = 0

    def reset(self) -> None:
        self.reset_index(0)

    def act(self, observation: dict) -> np.ndarray:
        self.single_calls += 1
        return self.ACTION

    def reset_index(self, index: int) -> None:
        self.resets.append(index)

    def act_batch(self, observations: list[dict], indices: list[int]) -> np.ndarray:
        assert len(observations) == len(indices) and all("state" in o for o in observations)
        self.batches.append(list(indices))
        return np.tile(self.ACTION, (len(indices), 1))


_CREATED: list[_BatchPolicy] = []


def _load_batch_policy(run_dir, config):
    def factory(env):
        return _BatchPolicy(_CREATED)

    factory.uses_images = False
    return factory


@pytest.fixture
def batch_policy_dir(tmp_path):
    if "batch_test" not in policy_registry:
        policy_registry.register("batch_test")(_load_batch_policy)
    _CREATED.clear()
    (tmp_path / "policy.json").write_text('{"type": "batch_test"}')
    return str(tmp_path), _CREATED


def test_one_batch_policy_acts_for_all_running_envs_in_one_call(batch_policy_dir):
    run_dir, created = batch_policy_dir
    assert isinstance(_BatchPolicy([]), BatchPolicy)
    results = evaluate(run_dir, ["reach"], 5, num_envs=3, progress=False)
    measured, stepped = created  # one for the control-rate measurement, one for all three envs
    assert stepped.single_calls == 0 and not measured.batches
    assert stepped.batches[0] == [0, 1, 2] and len(stepped.batches[-1]) < 3
    assert sum(map(len, stepped.batches)) == sum(row["length"] for row in results["episodes"])
    assert sorted(stepped.resets) == [0, 0, 1, 1, 2]  # slots refilled as episodes end
    one_env = evaluate(run_dir, ["reach"], 5, num_envs=1, progress=False)
    assert _without_timings(one_env) == _without_timings(results)


def test_instruction_placeholders_are_filled_per_episode():
    template = "put the {object} on the {target}"
    results = evaluate("scripted", ["pick_place"], 3, instruction=template, progress=False)
    import fmmm.envs

    env = fmmm.envs.make_env("pick_place", render=False)
    labels = env.unwrapped.task.labels
    for row in results["episodes"]:
        scene = row["scene"]
        expected = f"put the {labels[scene['object']]} on the {labels[scene['target']]}"
        assert row["instruction"] == expected
    assert results["instruction_override"] == template


@pytest.mark.parametrize(
    "template, message",
    [
        ("go to the {target}", "task reach has no {target}"),
        ("touch the {colour} thing", "unknown placeholder {colour}"),
        ("touch the {object", "literal brace"),
    ],
)
def test_bad_instruction_placeholders_are_named_before_any_rollout(template, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{")) as error:
        evaluate("scripted", ["reach"], 1, instruction=template, progress=False)
    assert "\n" not in str(error.value)


def test_validation_episodes_come_from_their_own_seed_split():
    test = evaluate("scripted", ["reach"], 3, progress=False)
    val = evaluate("scripted", ["reach"], 3, split="val", progress=False)
    assert val["split"] == "val" and test["split"] == "test"
    assert [row["seed"] for row in val["episodes"]] == [
        episode_seed("reach", 0, index, "val") for index in range(3)
    ]
    assert [row["seed"] >> 62 for row in test["episodes"]] == [1, 1, 1]
    with pytest.raises(ValueError, match="--split"):
        evaluate("scripted", ["reach"], 1, split="train", progress=False)


class _ChunkedPolicy:
    """Costs one 'forward pass' (a counter) per chunk of 4 actions."""

    chunk = 4
    forward_passes_per_action = 0.25

    def __init__(self):
        self.queue: list[np.ndarray] = []
        self.forward_passes = 0

    def reset(self) -> None:
        self.queue = []

    def act(self, observation: dict) -> np.ndarray:
        if not self.queue:
            self.forward_passes += 1
            self.queue = [np.zeros(7, np.float32)] * self.chunk
        return self.queue.pop()


def test_control_rate_times_whole_chunks_after_warm_up():
    policy = _ChunkedPolicy()
    rate = measure_control_rate(policy, {}, warmup=3, repeats=10)
    assert rate > 0
    # 3 warm-up calls (1 pass), then 10 rounded up to 12 timed calls from an empty queue (3 passes)
    assert policy.forward_passes == 4 and policy.queue == []


def test_results_state_the_control_rate_and_throughput():
    from fmmm.eval.rollout import format_table

    results = evaluate("scripted", ["reach"], 2, progress=False)
    control = results["timings"]["control"]
    assert control["actions_per_second"] > 0 and control["warmup"] == 3
    assert control["chunk"] is None and control["task"] == "reach"
    assert results["timings"]["episodes_per_second"] > 0
    table = format_table(results)
    assert "actions/s at batch 1 after 3 warm-up calls" in table and "episodes/s" in table
