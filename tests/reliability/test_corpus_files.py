"""Bad files, folders, shards and paths for every entry point that reads or writes them, run
in-process: exit 2, one line naming the culprit, nothing of the user's changed (the corpus of
issue 15, part two)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from .corpus import Case, case, check_case, copy_tree, is_root, make_bad_files

QUIET = "progress=false"


def data(command: str, *args: str, culprit, id: str):
    return case("data", command, *args, culprit=culprit, id=f"{command}-{id}")


# what mix and decontaminate need besides the bad input, so that the bad input is what they meet
NEEDS = {"mix": ("weights.text=1",), "decontaminate": ("eval_sets=[{evalset}]",)}

DATA = [
    data(command, *args, *NEEDS.get(command, ()), culprit=culprit, id=name)
    for command in ("stats", "dedup", "filter", "mix", "decontaminate")
    for name, args, culprit in [
        ("missing-input", ("-i", "{missing_dir}", "-o", "{out}", QUIET), "no_such_folder"),
        ("input-not-shard", ("-i", "{not_shard}", "-o", "{out}", QUIET), "notes.txt"),
        ("input-empty-folder", ("-i", "{empty_dir}", "-o", "{out}", QUIET), "empty_dir"),
        ("output-is-input", ("-i", "{shards}", "-o", "{shards}", QUIET), "shards"),
        ("output-inside-input", ("-i", "{shards}", "-o", "{shards}/out", QUIET), "shards"),
        ("output-is-file", ("-i", "{shards}", "-o", "{a_file}", QUIET), "a_file.txt"),
        ("config-missing", ("-i", "{shards}", "-o", "{out}", "{missing}"), "missing.yaml"),
        ("config-garbage", ("-i", "{shards}", "-o", "{out}", "{garbage}"), "garbage.yaml"),
        ("config-list", ("-i", "{shards}", "-o", "{out}", "{list_yaml}"), "list.yaml"),
        ("config-syntax", ("-i", "{shards}", "-o", "{out}", "{syntax_yaml}"), "syntax.yaml"),
        ("unknown-key", ("-i", "{shards}", "-o", "{out}", "bogus=1"), "bogus"),
        ("workers-zero", ("-i", "{shards}", "-o", "{out}", "workers=0"), "workers"),
        ("executor-unknown", ("-i", "{shards}", "-o", "{out}", "executor=spark"), "executor"),
    ]
] + [
    data("dedup", "-i", "{shards}", "-o", "{out}", "threshold=2", culprit="threshold", id="thr"),
    data("dedup", "-i", "{shards}", "-o", "{out}", "threshold=nan", culprit="threshold", id="nan"),
    data("dedup", "-i", "{shards}", "-o", "{out}", "ngram=0", culprit="ngram", id="ngram-zero"),
    data("dedup", "-i", "{shards}", "-o", "{out}", "num_perm=0", culprit="num_perm", id="perm"),
    data("dedup", "-i", "{shards}", "-o", "{out}", "hamming=64", culprit="hamming", id="hamming"),
    data("dedup", "-i", "{shards}", "-o", "{out}", "cosine=inf", culprit="cosine", id="cos-inf"),
    data("dedup", "-i", "{shards}", "-o", "{out}", "partitions=0", culprit="partitions", id="p0"),
    data("dedup", "-i", "{shards}", "-o", "{out}", "ngram=five", culprit="ngram", id="type"),
    data("dedup", "-i", "{shards}", culprit="-o", id="no-output"),
    data(
        "filter",
        "-i",
        "{shards}",
        "-o",
        "{out}",
        "min_words=9",
        "max_words=3",
        culprit="min_words",
        id="min-above-max",
    ),  # fmt: skip
    data("mix", "-i", "{shards}", "-o", "{out}", culprit="weights", id="no-weights"),
]


def datasets(*args: str, culprit, id: str):
    return case("datasets", *args, culprit=culprit, id=id)


DATASETS = [
    datasets("export-lerobot", "{missing_dir}", "{out}", culprit="no_such_folder", id="x-missing"),
    datasets("export-lerobot", "{a_file}", "{out}", culprit="a_file.txt", id="x-src-file"),
    datasets("export-lerobot", "{empty_dir}", "{out}", culprit="empty_dir", id="x-src-empty"),
    datasets("export-lerobot", "{folder}", "{out}", culprit="a_folder", id="x-not-dataset"),
    datasets("export-lerobot", "{demos}", "{demos}", culprit="demos", id="x-dst-is-src"),
    datasets("export-lerobot", "{demos}", "{demos}/meta", culprit="demos", id="x-dst-in-src"),
    datasets("export-lerobot", "{demos}", "{a_file}", culprit="a_file.txt", id="x-dst-file"),
    datasets("export-lerobot", "{demos}", "{folder}", culprit="a_folder", id="x-dst-nonempty"),
    datasets("export-lerobot", "{broken_info}", "{out}", culprit="info.json", id="x-bad-info"),
    datasets("export-lerobot", "{list_info}", "{out}", culprit="info.json", id="x-info-list"),
    datasets("export-lerobot", "{short_info}", "{out}", culprit="info.json", id="x-info-field"),
    datasets("export-lerobot", "{cut_episode}", "{out}", culprit="cut_episode", id="x-cut-ep"),
    datasets("import-lerobot", "{missing_dir}", "{out}", culprit="no_such_folder", id="i-missing"),
    datasets("import-lerobot", "{a_file}", "{out}", culprit="a_file.txt", id="i-src-file"),
    datasets("import-lerobot", "{empty_dir}", "{out}", culprit="empty_dir", id="i-src-empty"),
    datasets("import-lerobot", "{folder}", "{out}", culprit="a_folder", id="i-not-dataset"),
    datasets("import-lerobot", "{demos}", "{demos}", culprit="demos", id="i-dst-is-src"),
    datasets("import-lerobot", "{broken_info}", "{out}", culprit="info.json", id="i-bad-info"),
    datasets("info", "{missing_dir}", culprit="no_such_folder", id="info-missing"),
    datasets("info", "{a_file}", culprit="a_file.txt", id="info-file"),
    datasets("info", "{empty_dir}", culprit="empty_dir", id="info-empty"),
    datasets("info", "{broken_info}", culprit="info.json", id="info-json-syntax"),
    datasets("info", "{list_info}", culprit="info.json", id="info-json-list"),
    datasets("info", "{short_info}", culprit="info.json", id="info-missing-field"),
    datasets("info", "{garbage_info}", culprit="info.json", id="info-binary"),
]


def collect(*args: str, culprit, id: str):
    return case("collect", *args, culprit=culprit, id=id)


COLLECT = [
    collect(
        "--task",
        "fly_to_moon",
        "--episodes",
        "1",
        "--out",
        "{out}",
        culprit="fly_to_moon",
        id="unknown-task",
    ),  # fmt: skip
    collect("--task", "", "--episodes", "1", "--out", "{out}", culprit="task", id="empty-task"),
    collect("--task", "reach", "--episodes", "0", "--out", "{out}", culprit="episodes", id="ep-0"),
    collect("--task", "reach", "--episodes", "-3", "--out", "{out}", culprit="episodes", id="ep-"),
    collect(
        "--task",
        "reach",
        "--episodes",
        "1",
        "--out",
        "{a_file}",
        culprit="a_file.txt",
        id="out-is-file",
    ),  # fmt: skip
    collect(
        "--task",
        "reach",
        "--episodes",
        "1",
        "--out",
        "{folder}",
        culprit="a_folder",
        id="out-not-empty",
    ),  # fmt: skip
    collect(
        "--task",
        "reach",
        "--episodes",
        "1",
        "--out",
        "{out}",
        "--workers",
        "0",
        culprit="workers",
        id="workers-zero",
    ),  # fmt: skip
    collect(
        "--task",
        "reach",
        "--episodes",
        "1",
        "--out",
        "{out}",
        "--max-attempts",
        "0",
        culprit="max-attempts",
        id="attempts-zero",
    ),  # fmt: skip
    collect(
        "--task",
        "reach",
        "--episodes",
        "1",
        "--out",
        "{out}",
        "--noise",
        "-1",
        culprit="noise",
        id="noise-negative",
    ),  # fmt: skip
    collect(
        "--task",
        "reach",
        "--episodes",
        "1",
        "--out",
        "{out}",
        "--noise",
        "nan",
        culprit="noise",
        id="noise-nan",
    ),  # fmt: skip
    collect(
        "--task",
        "reach",
        "--episodes",
        "1",
        "--out",
        "{out}",
        "--noise",
        "inf",
        culprit="noise",
        id="noise-inf",
    ),  # fmt: skip
]


def evaluate(*args: str, culprit, id: str, slow: bool = False):
    # one episode: a case that is wrongly accepted then costs seconds, not minutes
    episodes = () if "--episodes" in args else ("--episodes", "1")
    return case("eval", *args, *episodes, culprit=culprit, id=id, slow=slow)


EVAL = [
    evaluate("--policy", "{missing_dir}", "--task", "reach", culprit="no_such_folder", id="no-run"),
    evaluate("--policy", "{empty_dir}", "--task", "reach", culprit="policy.json", id="no-spec"),
    evaluate("--policy", "{spec_syntax}", "--task", "reach", culprit="policy.json", id="spec-json"),
    evaluate("--policy", "{spec_list}", "--task", "reach", culprit="policy.json", id="spec-list"),
    evaluate("--policy", "{spec_no_type}", "--task", "reach", culprit="policy.json", id="no-type"),
    evaluate("--policy", "{spec_bad_type}", "--task", "reach", culprit="banana", id="bad-type"),
    evaluate("--policy", "{spec_binary}", "--task", "reach", culprit="policy.json", id="spec-bin"),
    evaluate("--policy", "random", "--task", "fly_to_moon", culprit="fly_to_moon", id="bad-task"),
    evaluate(
        "--policy",
        "random",
        "--task",
        "reach",
        "--episodes",
        "0",
        culprit="episodes",
        id="episodes-zero",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "random",
        "--task",
        "reach",
        "--episodes",
        "-1",
        culprit="episodes",
        id="episodes-negative",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "random",
        "--task",
        "reach",
        "--num-envs",
        "0",
        culprit="num-envs",
        id="num-envs-zero",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "random",
        "--task",
        "reach",
        "--envs-per-actor",
        "0",
        culprit="envs-per-actor",
        id="envs-per-actor-zero",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "random",
        "--task",
        "reach",
        "--out",
        "{a_file}",
        culprit="a_file.txt",
        id="out-is-file",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "random",
        "--task",
        "reach",
        "--out",
        "{folder}",
        culprit="a_folder",
        id="out-not-empty",
    ),  # fmt: skip
    evaluate(
        "--compare",
        "random",
        "{missing_dir}",
        "--task",
        "reach",
        culprit="no_such_folder",
        id="compare-missing",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "{vla_cut_weights}",
        "--task",
        "reach",
        culprit="model.safetensors",
        id="vla-truncated-safetensors",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "{vla_garbage_weights}",
        "--task",
        "reach",
        culprit="model.safetensors",
        id="vla-garbage-safetensors",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "{vla_no_weights}",
        "--task",
        "reach",
        culprit="model.safetensors",
        id="vla-missing-safetensors",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "{vla_config_field}",
        "--task",
        "reach",
        culprit="config.json",
        id="vla-config-missing-field",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "{vla_config_syntax}",
        "--task",
        "reach",
        culprit="config.json",
        id="vla-config-json-syntax",
    ),  # fmt: skip
    evaluate(
        "--policy",
        "{vla}",
        "--task",
        "reach",
        "--instruction",
        "reach " * 3000,
        culprit=("instruction", "context"),
        id="vla-instruction-past-context",
    ),  # fmt: skip
]


def write_text_shards(folder):
    folder.mkdir(parents=True)
    lines = [json.dumps({"text": f"Document number {i}. It has two sentences."}) for i in range(3)]
    (folder / "text-000000.jsonl").write_text("\n".join(lines) + "\n")
    with tarfile.open(folder / "web-000000.tar", "w") as tar:
        data = b"A caption about a cat. The cat sleeps."
        info = tarfile.TarInfo("cat.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def saved_vla(tmp_path_factory):
    """A tiny VLA run directory for the reach task (7-D actions, 16-D state), saved the real way
    (policy.json, model/, tokenizers)."""
    import torch

    from fmmm.models.backbone import preset
    from fmmm.models.factory import create_model_and_builder
    from fmmm.models.multimodal import MultimodalConfig
    from fmmm.policies.vla import VLA, VLAConfig
    from fmmm.tokenizers.action import ActionTokenizer, StateNormalizer
    from fmmm.tokenizers.text import default_text_tokenizer

    torch.manual_seed(0)
    config = MultimodalConfig(
        backbone=preset("debug", dim=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=64),
        text_vocab_size=512,
        action_bins=16,
        image_size=16,
        patch_size=8,
        state_dim=16,
    )
    tokenizers = {
        "text": default_text_tokenizer(512),
        "action": ActionTokenizer(16).fit(torch.rand(50, 7) * 2 - 1),
        "state": StateNormalizer().fit(torch.randn(50, 16)),
    }
    model, builder = create_model_and_builder(config, tokenizers)
    run = tmp_path_factory.mktemp("vla") / "run"
    VLA(model, builder, VLAConfig()).save(run)
    return run


def _vla_variant(saved, root, name, damage):
    run = copy_tree(saved, root / name)
    damage(run)
    return run


def _one(run, pattern):
    return next(iter(sorted(run.rglob(pattern))))


def make_files(root, demos, saved_vla):
    files = make_bad_files(root)
    write_text_shards(root / "shards")
    files["shards"] = root / "shards"
    files["evalset"] = root / "eval.jsonl"
    files["evalset"].write_text('{"text": "an evaluation question nobody trains on"}\n')
    files["demos"] = copy_tree(demos, root / "demos")
    for name, text in [
        ("broken_info", b'{"fps": 10, '),
        ("list_info", b"[]"),
        ("short_info", b'{"fps": 10}'),
        ("garbage_info", bytes(range(256))),
    ]:
        dataset = copy_tree(demos, root / name)
        (dataset / "meta" / "info.json").write_bytes(text)
        files[name] = dataset
    cut = copy_tree(demos, root / "cut_episode")
    episode = _one(cut / "data", "*.*")
    episode.write_bytes(episode.read_bytes()[:50])
    files["cut_episode"] = cut
    for name, text in [
        ("spec_syntax", b'{"type": '),
        ("spec_list", b'["vla"]'),
        ("spec_no_type", b'{"chunk": 1}'),
        ("spec_bad_type", b'{"type": "banana"}'),
        ("spec_binary", bytes(range(256))),
    ]:
        (root / name).mkdir()
        (root / name / "policy.json").write_bytes(text)
        files[name] = root / name
    if saved_vla is not None:
        files["vla"] = copy_tree(saved_vla, root / "vla")
        weights = lambda run: _one(run, "model.safetensors")  # noqa: E731
        config = lambda run: _one(run, "config.json")  # noqa: E731
        variants = {
            "vla_cut_weights": lambda run: weights(run).write_bytes(
                weights(run).read_bytes()[:100]
            ),
            "vla_garbage_weights": lambda run: weights(run).write_bytes(bytes(range(256)) * 8),
            "vla_no_weights": lambda run: weights(run).unlink(),
            "vla_config_field": lambda run: config(run).write_text(
                json.dumps(
                    {
                        k: v
                        for k, v in json.loads(config(run).read_text()).items()
                        if k != "backbone"
                    }
                )  # fmt: skip
            ),
            "vla_config_syntax": lambda run: config(run).write_text('{"backbone": '),
        }
        for name, damage in variants.items():
            files[name] = _vla_variant(saved_vla, root, name, damage)
    return files


@pytest.mark.parametrize("entry", DATA + DATASETS)
def test_bad_data_path_or_file_is_one_line_naming_it(entry, tmp_path, reach_demos):
    check_case(entry, make_files(tmp_path, reach_demos, None), tmp_path)


@pytest.mark.parametrize("entry", COLLECT + EVAL)
def test_bad_collect_or_eval_input_is_one_line_naming_it(entry, tmp_path, reach_demos, saved_vla):
    check_case(entry, make_files(tmp_path, reach_demos, saved_vla), tmp_path)


@pytest.mark.skipif(is_root(), reason="root writes through any permission")
@pytest.mark.parametrize("cli", ["data", "collect", "eval"])
def test_unwritable_output_is_one_line_naming_it(cli, tmp_path):
    files = make_bad_files(tmp_path)
    write_text_shards(tmp_path / "shards")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    args = {
        "data": ("stats", "-i", str(tmp_path / "shards"), "-o", f"{locked}/out", QUIET),
        "collect": ("--task", "reach", "--episodes", "1", "--out", f"{locked}/out"),
        "eval": (
            "--policy",
            "random",
            "--task",
            "reach",
            "--episodes",
            "1",
            "--out",
            f"{locked}/o",
        ),
    }[cli]
    try:
        check_case(Case(cli, args, "locked"), files, tmp_path)
    finally:
        locked.chmod(0o755)
