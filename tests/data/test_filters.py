import json

import numpy as np
import pytest

from fmmm.config import load_config
from fmmm.data.config import FilterConfig
from fmmm.data.filters import c4_clean, filter_corpus, gopher_reason
from fmmm.data.shards import encode_image, iter_samples, list_shards, make_sample, write_shard

from .conftest import document, precision_recall, smooth_image, vocabulary


def _config(**overrides) -> FilterConfig:
    return load_config(
        FilterConfig, None, ["progress=false"] + [f"{k}={v}" for k, v in overrides.items()]
    )


def _removed(output) -> dict[str, str]:
    lines = (output / "removed.jsonl").read_text().splitlines()
    return {item["key"]: item["reason"] for item in map(json.loads, lines)}


def low_quality_documents(rng, vocab) -> dict[str, str]:
    """One family of bad documents per rule, several of each."""
    bad = {}
    for i in range(6):
        good = document(rng, vocab, 8)
        bad[f"short{i}"] = "Too short to keep. It has few words here."
        bad[f"symbols{i}"] = good.replace(".", " ### ...") + " #"
        bad[f"bullets{i}"] = "\n".join("• " + line for line in good.splitlines())
        bad[f"nostop{i}"] = " ".join(
            w
            for w in good.split()
            if w.lower().strip(".")
            not in ("the", "of", "and", "to", "with", "that", "have", "be", "in", "a", "is", "for")
        )
        bad[f"numbers{i}"] = " ".join(str(n) + "." for n in rng.integers(0, 10**6, 200))
        bad[f"repeated{i}"] = "\n".join([good.splitlines()[0]] * 12)
        bad[f"lorem{i}"] = good + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
        bad[f"code{i}"] = good + "\nfunction f() { return 1; }"
        bad[f"nopunct{i}"] = good.replace(".", "")
        bad[f"blocked{i}"] = good + "\nThis line has a forbiddenword in it."
    return bad


def test_quality_filters_remove_planted_low_quality_documents(tmp_path):
    rng = np.random.default_rng(0)
    vocab = vocabulary()
    good = {f"good{i}": document(rng, vocab, int(rng.integers(4, 9))) for i in range(200)}
    bad = low_quality_documents(rng, vocab)
    items = list(good.items()) + list(bad.items())
    order = rng.permutation(len(items))
    write_shard(tmp_path / "in" / "web-000000.jsonl", [make_sample(*items[i]) for i in order])
    (tmp_path / "block.txt").write_text("forbiddenword\nsome bad phrase\n")
    report = filter_corpus(
        [str(tmp_path / "in")], str(tmp_path / "o"), _config(blocklist=tmp_path / "block.txt")
    )
    removed = _removed(tmp_path / "o")
    precision, recall = precision_recall(set(removed), set(bad))
    assert precision >= 0.95 and recall >= 0.95, (precision, recall, report["removed_by_reason"])
    assert removed["blocked0"] == "blocklist" and removed["lorem0"].startswith("c4:contains")
    assert (
        removed["bullets0"] == "gopher:bullet_lines"
        and removed["symbols0"] == "gopher:symbol_ratio"
    )
    assert sum(report["removed_by_reason"].values()) == len(removed)
    assert report["items_out"] == report["items_in"] - len(removed)


def test_c4_drops_lines_without_terminal_punctuation_and_keeps_the_rest():
    config = _config(c4_min_sentences=1)
    text = "A good line with words.\nmenu home about\nJavascript must be enabled here.\nAnother fine line!"
    cleaned, reason, dropped = c4_clean(text, config)
    assert reason is None and dropped == 2
    assert cleaned == "A good line with words.\nAnother fine line!"


def test_gopher_thresholds_come_from_the_config():
    text = " ".join(["the cat sat with the dog and ate."] * 10)
    assert gopher_reason(text, _config(min_words=1000)) == "gopher:word_count"
    assert (
        gopher_reason(
            text,
            _config(
                min_words=5,
                max_top_ngram_chars=[0.9, 0.9, 0.9],
                max_duplicate_ngram_chars=[1, 1, 1, 1, 1, 1],
            ),
        )
        is None
    )


def test_image_text_filters_count_small_images_bad_aspect_and_captions(tmp_path):
    wide = np.zeros((20, 200, 3), np.uint8)
    samples = [
        make_sample("ok", "a red cube on a table", image=encode_image(smooth_image(1))),
        make_sample("tiny", "a red cube", image=encode_image(smooth_image(2, size=8))),
        make_sample("wide", "a red cube", image=encode_image(wide)),
        make_sample("nocaption", "", image=encode_image(smooth_image(3))),
        make_sample("long", "word " * 200, image=encode_image(smooth_image(4))),
        make_sample("broken", "caption", image=b"\x89PNG broken", ext={"image": "png"}),
    ]
    write_shard(tmp_path / "in" / "pairs.tar", samples)
    report = filter_corpus([str(tmp_path / "in")], str(tmp_path / "o"), _config())
    assert _removed(tmp_path / "o") == {
        "tiny": "image:too_small",
        "wide": "image:aspect_ratio",
        "nocaption": "caption:too_short",
        "long": "caption:too_long",
        "broken": "bad_data",
    }
    assert (
        report["errors"][0]["position"] > 0 and "undecodable image" in report["errors"][0]["error"]
    )
    kept = [s["key"] for p in list_shards(tmp_path / "o" / "shards") for s in iter_samples(p)]
    assert kept == ["ok"]


@pytest.mark.slow
def test_clip_score_filter_uses_a_given_open_clip_model(tiny_clip, tmp_path):
    config_path, weights = tiny_clip
    samples = [
        make_sample(f"s{i}", f"caption number {i}", image=encode_image(smooth_image(i)))
        for i in range(8)
    ]
    write_shard(tmp_path / "in" / "pairs.tar", samples)
    from fmmm.data.filters import ClipScorer

    scorer = ClipScorer(str(config_path), str(weights))
    scores = scorer.scores(
        [smooth_image(i) for i in range(8)], [f"caption number {i}" for i in range(8)]
    )
    threshold = float(np.median(scores))
    report = filter_corpus(
        [str(tmp_path / "in")],
        str(tmp_path / "o"),
        _config(clip_model=config_path, clip_pretrained=weights, min_clip_score=threshold),
    )
    expected = {f"s{i}" for i in range(8) if scores[i] < threshold}
    assert set(_removed(tmp_path / "o")) == expected and len(expected) == 4
    assert report["removed_by_reason"] == {"clip_score": 4}


def test_filter_resumes_after_a_crash_without_redoing_finished_shards(tmp_path, monkeypatch):
    import fmmm.data.filters as filters

    rng = np.random.default_rng(1)
    vocab = vocabulary()
    for s in range(3):
        docs = [make_sample(f"d{s}_{i}", document(rng, vocab, 6)) for i in range(5)]
        write_shard(tmp_path / "in" / f"web-{s:06d}.jsonl", docs)
    real = filters.filter_unit

    def crash_on_second_shard(unit, work, config):
        if unit.index == 1:
            raise RuntimeError("simulated crash")
        return real(unit, work, config)

    monkeypatch.setattr(filters, "filter_unit", crash_on_second_shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        filter_corpus([str(tmp_path / "in")], str(tmp_path / "o"), _config())
    monkeypatch.setattr(filters, "filter_unit", real)
    report = filter_corpus([str(tmp_path / "in")], str(tmp_path / "o"), _config())
    assert report["units_reused"] == 1 and report["items_in"] == 15


def test_robot_datasets_pass_through_filter_unchanged(tmp_path):
    from fmmm.datasets.robot import RobotDataset

    from .conftest import random_episode, write_robot_dataset

    write_robot_dataset(tmp_path / "in" / "demos", [random_episode(s) for s in range(3)])
    report = filter_corpus([str(tmp_path / "in")], str(tmp_path / "o"), _config())
    assert report["items_out"] == 3
    assert RobotDataset(tmp_path / "o" / "shards" / "demos").num_episodes == 3
