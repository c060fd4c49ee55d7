"""Curation skips and reports: a bad tar member costs its sample, never the run; a killed run's
partial files are gone after the next one."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from fmmm.data.__main__ import main

from .conftest import checksums, run_main

GOOD = [("doc1.txt", b"The robot picks up the red block. Then it places it in the bin."), ("doc2.txt", b"A completely different document about cats. Cats sleep a lot.")]  # fmt: skip
UNSAFE = [("../../evil.txt", b"escape"), ("/etc/x.txt", b"absolute"), ("a/./b.txt", b"dot part")]


def write_tar(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo("placeholder")
            info.name = name
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("command", ["filter", "dedup", "stats"])
def test_unsafe_member_names_skip_the_sample_and_are_reported(tmp_path, command):
    shard = tmp_path / "in" / "web-000000.tar"
    write_tar(shard, [GOOD[0], *UNSAFE, GOOD[1]])
    before = checksums(tmp_path / "in")
    out = tmp_path / "out"
    result = run_main(main, command, "-i", tmp_path / "in", "-o", out, "progress=false")
    assert result.returncode == 0, result.stderr
    assert checksums(tmp_path / "in") == before
    report = json.loads((out / ("stats.json" if command == "stats" else "report.json")).read_text())
    reported = {(e["source"], e["error"].split("'")[1]) for e in report["errors"]}
    assert reported == {(str(shard), name) for name, _ in UNSAFE}
    if command != "stats":
        with tarfile.open(out / "shards" / shard.name) as tar:
            names = tar.getnames()
        assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)
        assert {n.split(".")[0] for n in names} <= {"doc1", "doc2"}


def test_absolute_member_names_are_never_copied_into_the_output(tmp_path):
    write_tar(tmp_path / "in" / "a.tar", [("/abs/doc.txt", b"Some text here. More text."), GOOD[0]])
    result = run_main(
        main, "dedup", "-i", tmp_path / "in", "-o", tmp_path / "out", "progress=false"
    )
    assert result.returncode == 0, result.stderr
    with tarfile.open(tmp_path / "out" / "shards" / "a.tar") as tar:
        assert tar.getnames() == ["doc1.txt"]


def test_partial_files_of_a_killed_run_are_removed_on_restart(tmp_path):
    write_tar(tmp_path / "in" / "a.tar", GOOD)
    out = tmp_path / "out"
    assert (
        run_main(main, "dedup", "-i", tmp_path / "in", "-o", out, "progress=false").returncode == 0
    )
    # what a run killed mid-write leaves: hidden temporaries beside shards, work files and reports
    leftovers = [
        out / "shards" / "..a.x1y2z3.tmp",
        out / ".report.json.abc123.tmp",
        next((out / ".work").iterdir()) / ".partial.npy.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a shard")
    (out / "shards" / ".folder.q1w2.tmp").mkdir()
    (out / "shards" / ".folder.q1w2.tmp" / "inner").write_text("x")
    assert (
        run_main(main, "dedup", "-i", tmp_path / "in", "-o", out, "progress=false").returncode == 0
    )
    assert not [p for p in out.rglob("*.tmp")]
    assert (out / "shards" / "a.tar").is_file()


def test_oversized_jsonl_record_is_skipped_and_reported_with_its_line(tmp_path, monkeypatch):
    from fmmm.data import shards

    monkeypatch.setattr(shards, "MAX_LINE_BYTES", 1024)
    source = tmp_path / "in" / "text.jsonl"
    source.parent.mkdir()
    lines = [
        '{"text": "short one. fine."}',
        json.dumps({"text": "x" * 5000}),
        '{"text": "last. ok."}',
    ]
    source.write_text("\n".join(lines) + "\n")
    result = run_main(main, "stats", "-i", source.parent, "-o", tmp_path / "out", "progress=false")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [(e["source"], e["position"]) for e in report["errors"]] == [(str(source), 2)]
    assert "1024" in report["errors"][0]["error"]
