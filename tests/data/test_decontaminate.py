import json

import numpy as np
import pytest

from fmmm.config import load_config
from fmmm.data.config import DecontaminateConfig
from fmmm.data.decontaminate import decontaminate
from fmmm.data.shards import encode_image, iter_samples, list_shards, make_sample, write_shard

from .conftest import (
    document,
    precision_recall,
    random_episode,
    smooth_image,
    vocabulary,
    write_robot_dataset,
)


def _config(eval_sets, **overrides) -> DecontaminateConfig:
    items = ["progress=false", f"eval_sets=[{','.join(map(str, eval_sets))}]"]
    return load_config(
        DecontaminateConfig, None, items + [f"{k}={v}" for k, v in overrides.items()]
    )


def _flagged(output) -> dict[str, dict]:
    lines = (output / "removed.jsonl").read_text().splitlines()
    return {item["key"]: item for item in map(json.loads, lines)}


@pytest.fixture(scope="module")
def contaminated(tmp_path_factory):
    """Clean docs, docs holding a whole eval item or a >= 13-word span, docs with 10-word spans."""
    root = tmp_path_factory.mktemp("decon")
    rng = np.random.default_rng(3)
    vocab = vocabulary()
    questions = [" ".join(document(rng, vocab, 1).split()[:24]) for _ in range(90)]
    eval_path = root / "bench.jsonl"
    write_shard(eval_path, [make_sample(f"q{i}", q) for i, q in enumerate(questions)])
    samples, truth, used = [], set(), set()
    for i in range(300):
        text = document(rng, vocab, 6)
        key = f"doc{i}"
        if i % 10 == 0:  # the whole question pasted into a document
            q = i // 10
            text = text + "\n" + questions[q] + " " + document(rng, vocab, 1)
            truth.add(key)
            used.add(f"q{q}")
        elif i % 10 == 1:  # a 15-word span
            q = i // 10 + 30
            words = questions[q].split()
            text = text + "\nAs it says: " + " ".join(words[5:20]) + " indeed."
            truth.add(key)
            used.add(f"q{q}")
        elif i % 10 == 2:  # a 10-word span only: below the 13-gram rule
            words = questions[i // 10 + 60].split()
            text = text + "\n" + " ".join(words[:10]) + "."
        samples.append(make_sample(key, text))
    write_shard(root / "train" / "web-000000.jsonl", samples[:150])
    write_shard(root / "train" / "web-000001.jsonl", samples[150:])
    return root, eval_path, truth, used, questions


def test_13gram_rule_finds_contaminated_documents_and_names_eval_items(contaminated, tmp_path):
    root, eval_path, truth, used, _ = contaminated
    report = decontaminate([str(root / "train")], str(tmp_path / "o"), _config([eval_path]))
    flagged = _flagged(tmp_path / "o")
    precision, recall = precision_recall(set(flagged), truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    (entry,) = report["eval_sets"]
    assert entry["eval_set"] == "bench" and entry["items"] == 90
    assert set(entry["found_in_training"]) == used and entry["found"] == len(used)
    assert flagged["doc0"]["eval_items"] == ["bench:q0"]
    kept = [s["key"] for p in list_shards(tmp_path / "o" / "shards") for s in iter_samples(p)]
    assert len(kept) == 300 - len(flagged) and not set(kept) & truth


def test_report_mode_flags_without_writing_shards(contaminated, tmp_path):
    root, eval_path, truth, _, _ = contaminated
    report = decontaminate(
        [str(root / "train")], str(tmp_path / "o"), _config([eval_path], mode="report")
    )
    assert set(_flagged(tmp_path / "o")) == truth
    assert not (tmp_path / "o" / "shards").exists() and "items_out" not in report
    assert "flagged" in report["summary"]


def test_8gram_70_percent_rule_is_an_option(tmp_path):
    rng = np.random.default_rng(0)
    vocab = vocabulary()
    question = " ".join(document(rng, vocab, 1).split()[:30])
    write_shard(tmp_path / "eval.jsonl", [make_sample("q", question)])
    words = question.split()
    most = " ".join(words[:24])  # 17 of 23 8-grams: 74%
    some = " ".join(words[:16])  # 9 of 23: 39%
    write_shard(
        tmp_path / "train" / "t.jsonl",
        [make_sample("most", most), make_sample("some", some)],
    )
    decontaminate(
        [str(tmp_path / "train")],
        str(tmp_path / "o"),
        _config([tmp_path / "eval.jsonl"], ngram=8, rule="fraction", fraction=0.7),
    )
    assert set(_flagged(tmp_path / "o")) == {"most"}


def test_near_identical_images_of_an_eval_folder_are_found(tmp_path):
    from PIL import Image

    folder = tmp_path / "eval_images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(smooth_image(100 + i)).save(folder / f"e{i}.png")
    samples = [
        make_sample(f"t{i}", "a photo", image=encode_image(smooth_image(i))) for i in range(12)
    ]
    for i in range(3):  # eval images re-encoded as JPEG
        samples.append(
            make_sample(
                f"leak{i}",
                "x",
                image=encode_image(smooth_image(100 + i), "jpg"),
                ext={"image": "jpg"},
            )
        )
    write_shard(tmp_path / "train" / "img-000000.tar", samples)
    report = decontaminate([str(tmp_path / "train")], str(tmp_path / "o"), _config([folder]))
    assert set(_flagged(tmp_path / "o")) == {"leak0", "leak1", "leak2"}
    assert report["eval_sets"][0]["found_in_training"] == ["e0.png", "e1.png", "e2.png"]


def test_identical_episodes_of_an_eval_dataset_are_found_and_removed(tmp_path):
    from fmmm.datasets.robot import RobotDataset

    train = [random_episode(s) for s in range(6)]
    evaluation = [random_episode(3), random_episode(50)]
    write_robot_dataset(tmp_path / "train" / "demos", train)
    write_robot_dataset(tmp_path / "eval_demos", evaluation)
    report = decontaminate(
        [str(tmp_path / "train")], str(tmp_path / "o"), _config([tmp_path / "eval_demos"])
    )
    assert set(_flagged(tmp_path / "o")) == {"episode_000003"}
    assert report["eval_sets"][0]["found_in_training"] == ["episode_000000"]
    assert RobotDataset(tmp_path / "o" / "shards" / "demos").num_episodes == 5


def test_simulation_suite_eval_episodes_are_matched_by_instruction_and_initial_state(tmp_path):
    from fmmm.data.episodes import sim_eval_episodes

    (first, second) = sim_eval_episodes("sim:pick_place:2")
    rng = np.random.default_rng(0)
    width = len(first["initial_state"])  # the environment's state layout decides it
    leaked = np.vstack([first["initial_state"], rng.normal(size=(9, width))])
    other = np.vstack([first["initial_state"] + 0.01, rng.normal(size=(9, width))])
    write_robot_dataset(
        tmp_path / "train" / "demos",
        [
            (first["instruction"], leaked, rng.uniform(-1, 1, (10, 7))),
            (first["instruction"], other, rng.uniform(-1, 1, (10, 7))),
        ],
    )
    report = decontaminate(
        [str(tmp_path / "train")], str(tmp_path / "o"), _config(["sim:pick_place:2"], mode="report")
    )
    assert set(_flagged(tmp_path / "o")) == {"episode_000000"}
    assert report["eval_sets"][0]["found_in_training"] == ["pick_place:0"]


def test_eval_sets_of_different_state_widths_each_match_training_episodes_of_their_width(
    tmp_path,
):
    from fmmm.data.episodes import sim_eval_episodes

    (first,) = sim_eval_episodes("sim:pick_place:1")
    rng = np.random.default_rng(0)
    width = len(first["initial_state"])
    old_layout = random_episode(7)  # a dataset recorded with a narrower (older) state
    assert len(old_layout[1][0]) != width
    write_robot_dataset(tmp_path / "eval_demos", [old_layout])
    sim_leak = np.vstack([first["initial_state"], rng.normal(size=(9, width))])
    write_robot_dataset(
        tmp_path / "train" / "today",
        [(first["instruction"], sim_leak, rng.uniform(-1, 1, (10, 7)))],
    )
    write_robot_dataset(tmp_path / "train" / "older", [random_episode(9), old_layout])
    report = decontaminate(
        [str(tmp_path / "train")],
        str(tmp_path / "o"),
        _config(["sim:pick_place:1", tmp_path / "eval_demos"], mode="report"),
    )
    found = {entry["eval_set"]: entry["found_in_training"] for entry in report["eval_sets"]}
    assert found == {"sim:pick_place:1": ["pick_place:0"], "eval_demos": ["episode_000000"]}
    assert len(_flagged(tmp_path / "o")) == 2


def test_empty_eval_sets_and_unknown_eval_paths_are_errors(tmp_path):
    from fmmm.config import ConfigError

    with pytest.raises(ConfigError, match="eval_sets is empty"):
        load_config(DecontaminateConfig, None, [])
    write_shard(tmp_path / "train" / "a.jsonl", [make_sample("a", "text")])
    with pytest.raises(ValueError, match="expected a .jsonl file"):
        decontaminate(
            [str(tmp_path / "train")], str(tmp_path / "o"), _config([tmp_path / "nothing.txt"])
        )
