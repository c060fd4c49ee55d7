import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _ports import free_port

SCRIPT = Path(__file__).with_name("_dist_contrastive.py")


def launch(*command: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_process_contrastive_sees_global_batch_and_matches_single_process_gradients(tmp_path):
    out = tmp_path / "dist.json"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    launch(
        torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), str(SCRIPT), str(out)
    )
    report = json.loads(out.read_text())
    assert report["world"] == 2
    for rank in report["ranks"]:
        for kind, figures in rank.items():
            # every process's loss is the loss of the whole 8-pair batch, not of its 3 or 5 rows
            assert figures["loss"] == pytest.approx(figures["reference_loss"], rel=1e-5), kind
            assert figures["max_grad_error"] < 1e-5 * max(1.0, figures["grad_scale"]), kind
