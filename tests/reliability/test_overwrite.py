"""Nothing destroyed without being asked: every command that writes a folder refuses its source,
a file, and a non-empty folder it did not write, unless --overwrite; replacing stays atomic."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fmmm.utils.io import atomic_dir, check_output_dir

from .conftest import REPO, assert_one_line_error, checksums, run_cli, unchanged


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two scripted reach demonstrations (the real collection path)."""
    from fmmm.collect import collect

    root = tmp_path_factory.mktemp("overwrite") / "reach"
    collect("reach", 2, root, seed=0, workers=1, progress=False)
    return root


def _someone_elses_folder(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("the user's own file")
    return path


def _destinations(tmp_path, source):
    tmp_path.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("the user's own file")
    return {
        "the source itself": (source, "is the input"),
        "inside the source": (source / "export", "overlaps the input"),
        "a parent of the source": (source.parent, "overlaps the input"),
        "a file": (a_file, "is a file"),
        "under a file": (a_file / "export", "is a file"),
        "a non-empty folder": (_someone_elses_folder(tmp_path / "mine"), "--overwrite"),
    }


@pytest.mark.parametrize("command", ["export-lerobot", "import-lerobot"])
def test_conversions_refuse_a_destination_that_would_lose_data(command, dataset, tmp_path):
    source = dataset
    if command == "import-lerobot":
        source = tmp_path / "lerobot"
        assert run_cli("fmmm.datasets", "export-lerobot", dataset, source).returncode == 0
    for name, (destination, culprit) in _destinations(tmp_path / "work", source).items():
        with unchanged(source, destination, tmp_path / "work"):
            result = run_cli("fmmm.datasets", command, source, destination)
        line = assert_one_line_error(result, culprit)
        assert str(destination) in line, name
    for name, (destination, _) in _destinations(tmp_path / "again", source).items():
        if name in ("the source itself", "inside the source", "a parent of the source", "a file"):
            with unchanged(source, destination):  # never, --overwrite or not
                result = run_cli("fmmm.datasets", command, source, destination, "--overwrite")
            assert result.returncode == 2, name


def test_export_overwrite_replaces_the_destination_in_one_rename(dataset, tmp_path):
    destination = _someone_elses_folder(tmp_path / "out")
    with unchanged(dataset):
        result = run_cli("fmmm.datasets", "export-lerobot", dataset, destination, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (destination / "notes.txt").exists()
    assert (destination / "meta" / "info.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary sibling left


def test_collect_refuses_a_foreign_folder_and_replaces_it_only_when_asked(tmp_path):
    out = _someone_elses_folder(tmp_path / "demos")
    args = ["--task", "reach", "--episodes", "1", "--out", out]
    with unchanged(tmp_path):
        assert_one_line_error(run_cli("fmmm.collect", *args), [str(out), "--overwrite"])
    result = run_cli("fmmm.collect", *args, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (out / "notes.txt").exists() and (out / "meta" / "info.json").is_file()
    # an earlier collection is the command's own folder: the same command leaves it as it is
    with unchanged(tmp_path):
        assert run_cli("fmmm.collect", *args).returncode == 0


def test_data_commands_refuse_a_foreign_output_folder_but_resume_their_own(tmp_path, write):
    shard = write("in/docs.jsonl", '{"text": "one document"}\n{"text": "another one"}\n')
    foreign = _someone_elses_folder(tmp_path / "foreign")
    with unchanged(tmp_path):
        result = run_cli("fmmm.data", "dedup", "-i", shard, "-o", foreign)
        assert_one_line_error(result, [str(foreign)])
        assert_one_line_error(run_cli("fmmm.data", "dedup", "-i", shard, "-o", shard), str(shard))
    out = tmp_path / "out"
    assert run_cli("fmmm.data", "dedup", "-i", shard, "-o", out).returncode == 0
    before = checksums(out / "shards")
    assert run_cli("fmmm.data", "dedup", "-i", shard, "-o", out).returncode == 0
    assert checksums(out / "shards") == before
    result = run_cli("fmmm.data", "dedup", "-i", shard, "-o", foreign, "--overwrite")
    assert result.returncode == 0 and (foreign / "notes.txt").is_file()


def test_eval_refuses_a_non_empty_out_before_evaluating(tmp_path):
    out = _someone_elses_folder(tmp_path / "eval")
    with unchanged(tmp_path):
        result = run_cli(
            "fmmm.eval", "--policy", "scripted", "--task", "reach", "--episodes", "1000",
            "--out", out, timeout=60,
        )  # fmt: skip
    assert_one_line_error(result, [str(out)])


def test_training_refuses_an_out_dir_that_holds_no_run(tmp_path):
    out = _someone_elses_folder(tmp_path / "run")
    with unchanged(tmp_path):
        result = run_cli(
            "fmmm.train", REPO / "configs" / "pretrain" / "smoke.yaml", f"out_dir={out}",
            f"data.cache_dir={tmp_path / 'cache'}", timeout=120,
        )  # fmt: skip
    assert_one_line_error(result, str(out))
    assert "--overwrite" in result.stderr


def test_training_with_overwrite_writes_into_a_folder_that_holds_no_run(tmp_path, monkeypatch):
    from fmmm.config import load_config
    from fmmm.train import __main__ as train_cli
    from fmmm.train import recipe
    from fmmm.train.vla import VLARunConfig

    monkeypatch.setitem(recipe.OVERWRITE, "allowed", False)  # restored after the test
    out = _someone_elses_folder(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cfg = load_config(VLARunConfig, REPO / "configs" / "quickstart.yaml", [f"out_dir={out}"])
    with pytest.raises(ValueError, match="pass --overwrite"):
        recipe.Run(cfg)
    seen = {}
    monkeypatch.setattr(
        "fmmm.train.runners.run",
        lambda path, overrides: seen.update(overrides=overrides, run=recipe.Run(cfg)),
    )
    assert train_cli.main([str(REPO / "configs" / "quickstart.yaml"), "--overwrite", "a=1"]) == 0
    assert seen["overrides"] == ["a=1"] and (out / "config.yaml").is_file()
    assert {
        p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name in before
    } == before


def test_check_output_dir_accepts_empty_new_and_own_folders(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # it creates nothing
    own = _someone_elses_folder(tmp_path / "own")
    (own / ".work").mkdir()
    check_output_dir(own, own_markers=(".work",))
    check_output_dir(tmp_path / "mine_too", overwrite=True)
    with pytest.raises(ValueError, match="choose another folder"):
        check_output_dir(_someone_elses_folder(tmp_path / "x"), flag=None)


def test_atomic_dir_never_replaces_a_file_and_leaves_the_old_folder_on_failure(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("keep")
    with pytest.raises(ValueError, match="is a file"):
        with atomic_dir(a_file):
            pass
    old = _someone_elses_folder(tmp_path / "d")
    with unchanged(tmp_path), pytest.raises(OSError):
        with atomic_dir(old) as tmp:
            (tmp / "partial").write_text("half")
            raise OSError(28, "No space left on device")


def test_a_replacement_killed_between_its_two_renames_is_undone_by_the_next_write(tmp_path):
    target = _someone_elses_folder(tmp_path / "d")
    os.replace(target, tmp_path / ".d.old")  # the state a kill after the first rename leaves
    with pytest.raises(RuntimeError):
        with atomic_dir(target):
            raise RuntimeError("stop before replacing")
    assert (target / "notes.txt").read_text() == "the user's own file"


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    code = (
        "import os, tempfile; from fmmm.utils.io import _temp_prefix; from pathlib import Path;"
        f"p = Path({str(tmp_path / 'out')!r});"
        "tempfile.mkdtemp(dir=p.parent, prefix=_temp_prefix(p), suffix='.tmp');"
        "tempfile.mkstemp(dir=p.parent, prefix=_temp_prefix(p.with_name('f.json')), suffix='.tmp')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)  # its pid is gone now
    assert len(list(tmp_path.iterdir())) == 2
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    from fmmm.utils.io import atomic_write_text

    atomic_write_text(tmp_path / "f.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "out"]
