"""`fmmm.eval --executor ray` gives the rows a local evaluation gives (the seed contract)."""

import json
import subprocess
import sys

from fmmm.eval.rollout import evaluate

TASK = "pick_place"


def test_ray_actors_of_two_lockstep_envs_write_the_rows_of_a_local_run(ray_cluster, tmp_path):
    local = evaluate("random", [TASK], 20, base_seed=5, num_envs=1, progress=False)
    command = [sys.executable, "-m", "fmmm.eval", "--policy", "random", "--task", TASK]
    command += ["--episodes", "20", "--seed", "5", "--num-envs", "4", "--out", str(tmp_path)]
    command += ["--executor", "ray", "--ray-address", ray_cluster, "--envs-per-actor", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    on_ray = json.loads((tmp_path / "results.json").read_text())
    assert on_ray["timings"]["num_envs"] == 4
    on_ray.pop("timings"), local.pop("timings")
    assert [row["episode"] for row in on_ray["episodes"]] == list(range(20))
    assert on_ray == json.loads(json.dumps(local))
