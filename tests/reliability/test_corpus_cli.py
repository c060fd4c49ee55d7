"""One corpus case per entry point through `python -m`, the way a user runs it: the in-process
cases call the same `main`, this checks the module's own exit path and interpreter startup."""

from __future__ import annotations

import pytest

from .conftest import assert_one_line_error, checksums, run_cli
from .corpus import MODEL_DEBUG, SMOKE, make_bad_files

CASES = {
    "fmmm.train": ((SMOKE, "out_dir={out}", "train.optim.lr=inf"), "lr"),
    "fmmm.eval": (("--policy", "{missing_dir}", "--task", "reach"), "no_such_folder"),
    "fmmm.collect": (("--task", "fly_to_moon", "--episodes", "1", "--out", "{out}"), "fly_to_moon"),
    "fmmm.datasets": (("info", "{missing_dir}"), "no_such_folder"),
    "fmmm.data": (("stats", "-i", "{missing_dir}"), "no_such_folder"),
    "fmmm.scaling": ((MODEL_DEBUG, "backbone.n_layers=100000000"), "n_layers"),
    "fmmm.demo": (("--image-size", "0"), "image_size"),
}


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(CASES))
def test_cli_answers_bad_input_with_one_line_and_exit_2(module, tmp_path):
    files = {k: str(v) for k, v in make_bad_files(tmp_path).items()}
    args, culprit = CASES[module]
    before = checksums(tmp_path)
    result = run_cli(module, *(arg.format(**files) for arg in args), cwd=tmp_path, timeout=300)
    assert_one_line_error(result, culprit)
    assert checksums(tmp_path) == before
