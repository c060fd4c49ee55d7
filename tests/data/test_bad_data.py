import hashlib
import json
import subprocess
import sys

import pytest

from fmmm.data.shards import encode_image, make_sample, write_shard

from .conftest import smooth_image


@pytest.fixture
def corpus_with_bad_shards(tmp_path):
    """Good shards plus a truncated tar, a JSONL with a broken line, a tar with a broken image."""
    root = tmp_path / "in"
    write_shard(
        root / "a-000000.jsonl",
        [make_sample(f"a{i}", f"document number {i} here.") for i in range(5)],
    )
    broken = root / "b-000000.jsonl"
    broken.write_text(
        '{"id": "b0", "text": "fine one"}\n{"id": "b1", "text": \n{"id": "b2", "text": "fine two"}\n'
    )
    pairs = [
        make_sample(f"p{i}", f"caption {i}", image=encode_image(smooth_image(i))) for i in range(6)
    ]
    write_shard(root / "c-000000.tar", pairs)
    data = (root / "c-000000.tar").read_bytes()
    (root / "c-000000.tar").write_bytes(data[: len(data) // 2])
    pairs[2] = make_sample("p2", "caption 2", image=b"garbage", ext={"image": "png"})
    write_shard(root / "d-000000.tar", pairs)
    return root


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("command", ["dedup", "filter", "stats"])
def test_bad_shards_are_reported_with_file_and_position_and_the_rest_is_processed(
    corpus_with_bad_shards, tmp_path, command
):
    before = _digest(corpus_with_bad_shards)
    out = tmp_path / "out"
    settings = ["progress=false"] + (
        ["min_words=1", "c4=false", "gopher=false"] if command == "filter" else []
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmmm.data",
            command,
            "-i",
            str(corpus_with_bad_shards),
            "-o",
            str(out),
            *settings,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / ("stats.json" if command == "stats" else "report.json")).read_text())
    errors = {(e["source"].rsplit("/", 1)[-1], e["position"]): e["error"] for e in report["errors"]}
    assert ("b-000000.jsonl", 2) in errors and "invalid JSON" in errors[("b-000000.jsonl", 2)]
    assert any(src == "c-000000.tar" and "truncated" in msg for (src, _), msg in errors.items())
    if command != "stats":  # stats does not decode images
        assert any(
            src == "d-000000.tar" and "undecodable image 'p2'" in msg
            for (src, _), msg in errors.items()
        )
        assert report["items_out"] >= 5 + 2 + 5  # every good item of the good shards survives
    assert "bad data skipped" in result.stdout
    assert _digest(corpus_with_bad_shards) == before
