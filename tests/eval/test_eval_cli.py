import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmmm.eval.rollout import evaluate
from fmmm.policies.factory import load_policy, policy_registry

PYTHON = sys.executable
TASK = "pick_place"


def _eval(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [PYTHON, "-m", "fmmm.eval", "--task", TASK, "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _without_timings(path: Path) -> dict:
    results = json.loads(path.read_text())
    results.pop("timings")
    return results


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["scripted", "random"])
def test_results_are_identical_across_runs_and_num_envs(tmp_path, policy):
    in_process = evaluate(policy, [TASK], 4, base_seed=3, num_envs=1, progress=False)
    run = _eval(tmp_path, "--policy", policy, "--episodes", "4", "--seed", "3", "--num-envs", "2")
    assert run.returncode == 0, run.stderr
    assert TASK in run.stdout and "95% CI" in run.stdout
    from_cli = _without_timings(tmp_path / "results.json")
    in_process.pop("timings")
    assert from_cli == json.loads(json.dumps(in_process))
    assert [row["episode"] for row in from_cli["episodes"]] == [0, 1, 2, 3]
    expected = 1.0 if policy == "scripted" else 0.0
    assert from_cli["summary"][TASK]["success_rate"] == expected


def test_videos_are_named_by_outcome(tmp_path):
    import imageio.v2 as imageio

    results = evaluate("random", [TASK], 1, base_seed=0, video_dir=tmp_path, progress=False)
    row = results["episodes"][0]
    assert row["video"] == f"{TASK}_ep000_failure.mp4"
    frames = imageio.mimread(tmp_path / row["video"])
    # one frame per step plus the last observation; agent view and wrist side by side
    assert len(frames) == row["length"] + 1 and frames[0].shape == (64, 128, 3)


class _ConstantPolicy:
    """Closes the gripper and stays put; remembers the instructions it was shown."""

    def __init__(self, seen: list[str]):
        self.seen = seen

    def reset(self) -> None:
        pass

    def act(self, observation: dict) -> np.ndarray:
        self.seen.append(observation["instruction"])
        return np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float32)


def test_run_directory_policies_load_through_the_registry(tmp_path):
    seen: list[str] = []
    if "constant_test" not in policy_registry:
        policy_registry.register("constant_test")(
            lambda run_dir, config: lambda env: _ConstantPolicy(seen)
        )
    (tmp_path / "policy.json").write_text(json.dumps({"type": "constant_test", "width": 3}))
    factory = load_policy(str(tmp_path))
    assert isinstance(factory(None), _ConstantPolicy)
    results = evaluate(str(tmp_path), [TASK], 1, instruction="wave at the camera", progress=False)
    assert results["episodes"][0]["instruction"] == "wave at the camera"
    control = results["timings"]["control"]  # measured on the same policy, before the episode
    measured = control["warmup"] + control["timed_actions"]
    assert set(seen) == {"wave at the camera"}
    assert len(seen) == results["episodes"][0]["length"] + measured


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "scripted", "--task", "no_such_task"], "unknown task"),
        (["--policy", "scripted", "--episodes", "0"], "--episodes"),
        (["--policy", "/no/such/run"], "neither a known name"),
        (["--policy", "random", "--num-envs", "0"], "--num-envs"),
        (
            ["--policy", "scripted", "--task", "reach", "--instruction", "go to {target}"],
            "{target}",
        ),
        (["--policy", "scripted", "--task", "reach", "--instruction", "a {colour}"], "{colour}"),
        (["--compare", "scripted", "/no/such/run", "--task", "reach"], "neither a known name"),
        (["--policy", "scripted", "--policy-option", "flow_steps"], "KEY=VALUE"),
        (["--policy", "scripted", "--policy-option", "flow_steps=7"], "need a run directory"),
    ],
)
def test_bad_eval_arguments_exit_2_with_one_line(args, message):
    command = [PYTHON, "-m", "fmmm.eval", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_policy_options_replace_values_of_policy_json_for_one_load(tmp_path):
    from fmmm.eval.__main__ import policy_options

    configs: list[dict] = []
    if "options_test" not in policy_registry:
        policy_registry.register("options_test")(
            lambda run_dir, config: configs.append(dict(config)) or (lambda env: None)
        )
    (tmp_path / "policy.json").write_text(json.dumps({"type": "options_test", "flow_steps": 10}))
    options = policy_options(["flow_steps=7", "name=fast", "scale=0.5"])
    assert options == {"flow_steps": 7, "name": "fast", "scale": 0.5}
    load_policy(str(tmp_path), options)
    load_policy(str(tmp_path))
    assert configs == [{"flow_steps": 7, "name": "fast", "scale": 0.5}, {"flow_steps": 10}]
    assert json.loads((tmp_path / "policy.json").read_text())["flow_steps"] == 10  # untouched


@pytest.mark.parametrize("content", ["{broken", '{"kind": "vla"}', '{"type": "no_such_type"}'])
def test_bad_policy_json_is_reported(tmp_path, content):
    (tmp_path / "policy.json").write_text(content)
    with pytest.raises(ValueError) as error:
        load_policy(str(tmp_path))
    assert "policy.json" in str(error.value) and "\n" not in str(error.value)


def test_compare_runs_both_policies_on_the_same_episodes(tmp_path):
    command = [PYTHON, "-m", "fmmm.eval", "--compare", "scripted", "random", "--task", "reach"]
    command += ["--episodes", "5", "--num-envs", "2", "--out", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "A only" in run.stdout and "McNemar" in run.stdout
    comparison = json.loads((tmp_path / "compare.json").read_text())
    reach = comparison["summary"]["reach"]
    assert (reach["success_a"], reach["success_b"], reach["only_a"], reach["only_b"]) == (
        1,
        0,
        5,
        0,
    )
    assert reach["p_value"] == 2 / 2**5
    seeds_a = [row["seed"] for row in comparison["runs"]["a"]["episodes"]]
    assert seeds_a == [row["seed"] for row in comparison["runs"]["b"]["episodes"]]
    assert seeds_a == [row["seed"] for row in comparison["episodes"]]


def test_help_documents_every_evaluation_option():
    run = subprocess.run(
        [PYTHON, "-m", "fmmm.eval", "--help"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0
    options = ("--compare", "--split", "{object}", "{target}", "--num-envs", "batch 1")
    for option in (*options, "--policy-option", "flow_steps"):
        assert option in run.stdout, option
