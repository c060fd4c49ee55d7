"""`executor=ray` writes what `executor=local` writes, and resumes after a killed driver."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fmmm.config import load_config
from fmmm.data.config import DecontaminateConfig, DedupConfig, FilterConfig, MixConfig
from fmmm.data.decontaminate import decontaminate
from fmmm.data.dedup import dedup
from fmmm.data.filters import filter_corpus
from fmmm.data.mixture import mix
from fmmm.data.shards import encode_image, list_shards, make_sample, write_shard

from .conftest import document, smooth_image, vocabulary


def _config(schema, *settings: str):
    return load_config(schema, None, ["progress=false", *settings])


def _outputs(output) -> dict:
    """Everything a run writes that must not depend on the engine, output paths made relative."""
    shards = {str(p.relative_to(output)): p.read_bytes() for p in list_shards(output / "shards")}
    report = json.loads((output / "report.json").read_text().replace(str(output), "OUT"))
    report.pop("units_reused")
    removed = output / "removed.jsonl"
    lines = sorted(removed.read_text().splitlines()) if removed.exists() else []
    return {"shards": shards, "report": report, "removed": lines}


def _both(run, tmp_path, schema, *settings):
    run(_config(schema, "workers=2", *settings), tmp_path / "local")
    run(_config(schema, "executor=ray", *settings), tmp_path / "ray")
    local, on_ray = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    assert local["shards"] and local == on_ray
    return local


@pytest.fixture
def mixed_corpus(tmp_path, text_corpus):
    """The planted text corpus plus an image shard with exact and near-duplicate images."""
    images = []
    for i in range(12):
        image = smooth_image(i % 8)
        if i >= 8:
            image = np.clip(image.astype(int) + 3, 0, 255).astype(np.uint8)  # near duplicates
        images.append(make_sample(f"img{i}", "a picture", image=encode_image(image)))
    images.append(make_sample("img-copy", "a picture", image=encode_image(smooth_image(0))))
    write_shard(tmp_path / "in" / "laion-000000.tar", images)
    return [str(text_corpus.folder), str(tmp_path / "in")]


def test_ray_dedup_writes_the_same_items_removed_log_and_report_as_local(
    ray_cluster, mixed_corpus, tmp_path
):
    local = _both(
        lambda config, out: dedup(mixed_corpus, str(out), config),
        tmp_path,
        DedupConfig,
        "partitions=5",
    )
    reasons = {json.loads(line)["reason"] for line in local["removed"]}
    assert {"exact_duplicate", "near_duplicate_text", "near_duplicate_image"} <= reasons


def test_ray_decontaminate_matches_local(ray_cluster, tmp_path):
    rng = np.random.default_rng(0)
    vocab = vocabulary()
    questions = [" ".join(document(rng, vocab, 1).split()[:20]) for _ in range(10)]
    write_shard(
        tmp_path / "bench.jsonl", [make_sample(f"q{i}", q) for i, q in enumerate(questions)]
    )
    for shard in range(3):
        docs = [document(rng, vocab, 4) for _ in range(40)]
        docs[shard] += "\n" + questions[shard]
        samples = [make_sample(f"d{shard}-{i}", text) for i, text in enumerate(docs)]
        write_shard(tmp_path / "train" / f"web-{shard:06d}.jsonl", samples)
    local = _both(
        lambda config, out: decontaminate([str(tmp_path / "train")], str(out), config),
        tmp_path,
        DecontaminateConfig,
        f"eval_sets=[{tmp_path / 'bench.jsonl'}]",
    )
    assert len(local["removed"]) == 3


def test_ray_filter_matches_local(ray_cluster, tmp_path):
    rng = np.random.default_rng(1)
    vocab = vocabulary()
    for shard in range(3):
        docs = [document(rng, vocab, 6) for _ in range(30)] + ["Too short to keep."] * 3
        samples = [make_sample(f"d{shard}-{i}", text) for i, text in enumerate(docs)]
        write_shard(tmp_path / "in" / f"web-{shard:06d}.jsonl", samples)
    local = _both(
        lambda config, out: filter_corpus([str(tmp_path / "in")], str(out), config),
        tmp_path,
        FilterConfig,
    )
    assert len(local["removed"]) >= 9


def test_ray_mix_matches_local(ray_cluster, tmp_path):
    for source, count in (("wiki", 50), ("code", 30)):
        for shard in range(2):
            samples = [make_sample(f"{source}{shard}-{i}", f"{source} {i}") for i in range(count)]
            write_shard(tmp_path / "in" / source / f"{source}-{shard:06d}.jsonl", samples)
    _both(
        lambda config, out: mix([str(tmp_path / "in")], str(out), config),
        tmp_path,
        MixConfig,
        "weights={wiki: 0.6, code: 0.4}",
    )


# A driver that SIGKILLs itself once two shards have finished their features stage.
_DYING_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import fmmm.data.pipeline as pipeline
    from fmmm.data.__main__ import main

    write, finished = pipeline.atomic_write_json, []

    def write_then_die(path, data):
        write(path, data)
        if path.parent.name == "features":
            finished.append(path)
            if len(finished) == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    pipeline.atomic_write_json = write_then_die
    sys.exit(main(sys.argv[1:]))
    """
)


def test_ray_dedup_resumes_after_a_killed_driver_without_redoing_finished_shards(
    ray_cluster, text_corpus, tmp_path
):
    out = tmp_path / "ray"
    command = [sys.executable, "-c", _DYING_DRIVER, "dedup", "-i", str(text_corpus.folder)]
    command += ["-o", str(out), "progress=false", "executor=ray", f"ray_address={ray_cluster}"]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    markers = sorted(out.glob(".work/dedup-*/features/*.json"))
    assert len(markers) == 2 and not (out / "report.json").exists()
    stamps = {m: os.stat(m).st_mtime_ns for m in markers}
    features = {
        f: os.stat(f).st_mtime_ns for m in markers for f in (m.parent / m.stem).glob("*.npy")
    }
    report = dedup([str(text_corpus.folder)], str(out), _config(DedupConfig, "executor=ray"))
    assert {m: os.stat(m).st_mtime_ns for m in markers} == stamps
    assert {f: os.stat(f).st_mtime_ns for f in features} == features
    assert len(list(out.glob(".work/dedup-*/features/*.json"))) == report["units"]
    dedup([str(text_corpus.folder)], str(tmp_path / "local"), _config(DedupConfig))
    assert _outputs(out) == _outputs(tmp_path / "local")


def test_an_address_nobody_listens_on_is_a_one_line_error_not_a_wait():
    from fmmm.utils.ray_cluster import _require_reachable

    with pytest.raises(ValueError, match="no Ray cluster at 127.0.0.1:1"):
        _require_reachable("127.0.0.1:1", seconds=2)
    _require_reachable("auto")  # resolved by Ray itself
