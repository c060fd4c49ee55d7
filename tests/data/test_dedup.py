import json

import numpy as np
import pytest

from fmmm.config import load_config
from fmmm.data.config import DedupConfig
from fmmm.data.dedup import dedup
from fmmm.data.shards import iter_samples, list_shards

from .conftest import precision_recall


def _removed(output, reason: str) -> set[str]:
    lines = (output / "removed.jsonl").read_text().splitlines()
    return {item["key"] for item in map(json.loads, lines) if item["reason"] == reason}


def _config(**overrides) -> DedupConfig:
    return load_config(
        DedupConfig, None, ["progress=false"] + [f"{k}={v}" for k, v in overrides.items()]
    )


def _kept_keys(output) -> list[str]:
    return [s["key"] for p in list_shards(output / "shards") for s in iter_samples(p)]


def test_dedup_finds_planted_exact_and_near_duplicates_with_high_precision_and_recall(
    text_corpus, tmp_path
):
    out = tmp_path / "out"
    report = dedup([str(text_corpus.folder)], str(out), _config())
    exact_p, exact_r = precision_recall(_removed(out, "exact_duplicate"), text_corpus.exact)
    near_p, near_r = precision_recall(_removed(out, "near_duplicate_text"), set(text_corpus.near))
    assert exact_p >= 0.95 and exact_r >= 0.95, (exact_p, exact_r)
    assert near_p >= 0.95 and near_r >= 0.95, (near_p, near_r)
    assert report["items_out"] == report["items_in"] - len(
        _removed(out, "exact_duplicate") | _removed(out, "near_duplicate_text")
    )
    assert "candidate with probability" in report["summary"]


def test_exact_jaccard_verification_never_removes_a_pair_below_threshold(text_corpus, tmp_path):
    out = tmp_path / "out"
    dedup([str(text_corpus.folder)], str(out), _config(verify="jaccard"))
    removed = _removed(out, "near_duplicate_text")
    precision, recall = precision_recall(removed, set(text_corpus.near))
    assert precision == 1.0 and recall >= 0.95, (precision, recall)
    for line in (out / "removed.jsonl").read_text().splitlines():
        item = json.loads(line)
        if item["reason"] == "near_duplicate_text":
            assert float(item["detail"].split()[-1]) >= 0.8


def test_kept_item_is_the_first_in_shard_then_position_order(text_corpus, tmp_path):
    out = tmp_path / "out"
    dedup([str(text_corpus.folder)], str(out), _config(verify="jaccard"))
    kept = _kept_keys(out)
    # kept order is the input order minus removals
    order = {key: i for i, key in enumerate(text_corpus.keys)}
    assert kept == sorted(kept, key=order.get)
    for line in (out / "removed.jsonl").read_text().splitlines():
        item = json.loads(line)
        source, position = item["duplicate_of"].rsplit(":", 1)
        assert (source, int(position)) < (item["source"], item["position"])


def test_parallel_run_writes_identical_output_to_sequential_run(text_corpus, tmp_path):
    dedup([str(text_corpus.folder)], str(tmp_path / "a"), _config(workers=1))
    dedup([str(text_corpus.folder)], str(tmp_path / "b"), _config(workers=2))
    for a, b in zip(list_shards(tmp_path / "a" / "shards"), list_shards(tmp_path / "b" / "shards")):
        assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "removed.jsonl").read_text() == (
        tmp_path / "b" / "removed.jsonl"
    ).read_text()


def test_rerun_reuses_completed_shards_and_redoes_only_missing_ones(text_corpus, tmp_path):
    out = tmp_path / "out"
    first = dedup([str(text_corpus.folder)], str(out), _config())
    assert first["units_reused"] == 0
    shard = sorted((out / "shards").glob("*.jsonl"))[0]
    expected = shard.read_bytes()
    # simulate a crash before shard 0 was written: its output and its completion mark are gone
    shard.unlink()
    (next(out.glob(".work/dedup-*/write")) / "000000.json").unlink()
    second = dedup([str(text_corpus.folder)], str(out), _config())
    assert second["units_reused"] == first["units"] - 1
    assert shard.read_bytes() == expected


def test_dedup_leaves_input_untouched(text_corpus, tmp_path):
    before = {p: p.read_bytes() for p in list_shards(text_corpus.folder)}
    dedup([str(text_corpus.folder)], str(tmp_path / "out"), _config())
    assert {p: p.read_bytes() for p in list_shards(text_corpus.folder)} == before


def test_output_inside_input_is_refused(text_corpus):
    with pytest.raises(ValueError, match="outside the input"):
        dedup([str(text_corpus.folder)], str(text_corpus.folder / "out"), _config())


def test_images_dedup_by_pixels_and_perceptual_hash(image_shard, tmp_path):
    path, truth = image_shard
    out = tmp_path / "out"
    dedup([str(path)], str(out), _config())
    assert _removed(out, "exact_duplicate") == truth["exact"]
    assert _removed(out, "near_duplicate_image") == truth["near"]


def test_lsh_warning_when_detection_probability_at_threshold_is_low(text_corpus, tmp_path):
    report = dedup([str(text_corpus.folder)], str(tmp_path / "o"), _config(bands=4, rows=32))
    assert any(note.startswith("warning: detection probability") for note in report["notes"])


def test_bad_config_values_name_the_key():
    from fmmm.config import ConfigError

    with pytest.raises(ConfigError, match="bands x rows"):
        _config(bands=20, rows=10)
    with pytest.raises(ConfigError, match="verify"):
        _config(verify="maybe")


def test_video_frames_dedup_by_per_frame_hashes(tmp_path):
    from fmmm.data.shards import encode_frames, make_sample, write_shard

    from .conftest import smooth_image

    clip = np.stack([smooth_image(s) for s in range(4)])
    other = np.stack([smooth_image(s) for s in range(10, 14)])
    brighter = np.clip(clip.astype(int) + 5, 0, 255).astype(np.uint8)
    samples = [
        make_sample("clip", "a", video=encode_frames(clip)),
        make_sample("other", "b", video=encode_frames(other)),
        make_sample("bright", "c", video=encode_frames(brighter)),
    ]
    write_shard(tmp_path / "v.tar", samples)
    dedup([str(tmp_path / "v.tar")], str(tmp_path / "out"), _config())
    assert _removed(tmp_path / "out", "near_duplicate_video") == {"bright"}


def test_robot_episodes_dedup_on_downsampled_trajectories_and_instruction(tmp_path):
    from fmmm.datasets.robot import RobotDataset

    from .conftest import random_episode, write_robot_dataset

    episodes = [random_episode(s) for s in range(4)]
    instruction, states, actions = episodes[1]
    jittered = (instruction, states + 1e-5, actions - 1e-5)  # below the rounding: same episode
    other_task = ("open the drawer", states, actions)  # same motion, other instruction: kept
    write_robot_dataset(tmp_path / "in" / "a", episodes)
    write_robot_dataset(tmp_path / "in" / "b", [jittered, other_task, random_episode(9)])
    report = dedup([str(tmp_path / "in")], str(tmp_path / "out"), _config())
    lines = (tmp_path / "out" / "removed.jsonl").read_text().splitlines()
    (item,) = map(json.loads, lines)
    assert item["key"] == "episode_000000" and item["source"].endswith("/b")
    assert item["reason"] == "exact_duplicate" and item["duplicate_of"].endswith("/a:1")
    assert RobotDataset(tmp_path / "out" / "shards" / "a").num_episodes == 4
    kept = RobotDataset(tmp_path / "out" / "shards" / "b")
    assert kept.num_episodes == 2 and kept.instruction(0) == "open the drawer"
    assert report["items_out"] == 6


@pytest.mark.slow
def test_image_embeddings_from_a_given_clip_model_find_near_duplicates(tiny_clip, tmp_path):
    from fmmm.data.filters import ClipScorer
    from fmmm.data.shards import encode_image, make_sample, write_shard
    from fmmm.data.similarity import keep_first

    from .conftest import smooth_image

    config_path, weights = tiny_clip
    images = [smooth_image(i) for i in range(8)]
    samples = [
        make_sample(f"i{i}", "x", image=encode_image(image)) for i, image in enumerate(images)
    ]
    write_shard(tmp_path / "i.tar", samples)
    # the expected decisions, straight from the model: keep-first over pairs above the threshold
    vectors = ClipScorer(str(config_path), str(weights)).embed_images(images)
    similarity = vectors @ vectors.T
    later, earlier = np.nonzero(np.tril(similarity, -1) >= 0.98)
    removed, _, _ = keep_first(later, earlier, similarity[later, earlier])
    assert 0 < len(removed) < 7
    settings = {"hamming": 0, "clip_model": config_path, "clip_pretrained": weights}
    dedup([str(tmp_path / "i.tar")], str(tmp_path / "o"), _config(cosine=0.98, **settings))
    assert _removed(tmp_path / "o", "near_duplicate_image") == {f"i{i}" for i in removed}


def test_cli_reads_a_yaml_config_then_overrides(text_corpus, tmp_path):
    import subprocess
    import sys

    (tmp_path / "dedup.yaml").write_text("threshold: 0.9\nnum_perm: 64\nverify: none\n")
    command = [sys.executable, "-m", "fmmm.data", "dedup", "-i", str(text_corpus.folder)]
    command += ["-o", str(tmp_path / "o"), str(tmp_path / "dedup.yaml"), "verify=jaccard"]
    result = subprocess.run(command + ["progress=false"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "o" / "report.json").read_text())["config"]
    assert (config["threshold"], config["num_perm"], config["verify"]) == (0.9, 64, "jaccard")
    assert "near_duplicate_text" in result.stdout and "64 permutations" in result.stderr
