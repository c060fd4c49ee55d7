import json
import math

import pytest
import torch

from fmmm.config import ConfigError, load_config
from fmmm.resources import data_dir
from fmmm.train.posttrain import (
    DPOModel,
    PostTrainConfig,
    QuestionAnswering,
    SFTModel,
    posttrain,
    scene_questions,
)

TINY = [
    "data.tasks=[reach]",
    "data.scenes=4",
    "data.eval_scenes=2",
    "data.image_size=16",
    "init.mode=scratch",
    "model.backbone.dim=32",
    "model.backbone.n_layers=1",
    "model.backbone.n_heads=2",
    "model.backbone.ffn_hidden=64",
    "model.image_size=16",
    "train.steps=2",
    "train.batch_size=4",
    "train.prefetch=false",
    "train.logging.progress=false",
    "train.optim.warmup_steps=1",
]


@pytest.fixture(scope="module")
def reach_questions():
    return scene_questions(["reach"], 2, seed=0, split="train", image_size=16)


def tiny(kind: str, out_dir, *extra) -> PostTrainConfig:
    path = data_dir("configs") / "posttrain" / f"{kind}.yaml"
    return load_config(PostTrainConfig, path, [*TINY, f"out_dir={out_dir}", *extra])


def qa_and_model(tmp_path):
    from fmmm.train.posttrain import build_model

    torch.manual_seed(0)
    model, builder = build_model(tiny("sft", tmp_path))
    return QuestionAnswering(builder), model


def test_scene_answers_come_from_the_simulated_scene(reach_questions):
    assert len(reach_questions) == 6  # three objects: count, closest, farthest per scene
    by_question = {q["question"]: q for q in reach_questions[:3]}
    assert by_question["How many objects are on the table?"]["answer"] == "three."
    closest = by_question["Which object is closest to the gripper?"]
    farthest = by_question["Which object is farthest from the gripper?"]
    assert closest["answer"] == farthest["rejected"] and closest["answer"] != farthest["answer"]
    assert all(q["answer"] != q["rejected"] for q in reach_questions)
    assert reach_questions[0]["image"].shape == (16, 16, 3)


def test_sft_loss_covers_the_answer_tokens_only(tmp_path, reach_questions):
    qa, model = qa_and_model(tmp_path)
    item = reach_questions[1]
    batch = qa.batch([qa.sample(item, item["answer"])])
    text = qa.builder.text_tokenizer
    answer_ids = text.encode([" " + item["answer"]], add_eos=True)[0]
    trained = batch.targets[batch.targets != -100].tolist()
    assert trained == answer_ids
    loss, info = SFTModel(model)(batch)
    assert loss.item() == pytest.approx(info["ce_loss"].item())


def test_dpo_starts_at_log2_with_a_frozen_reference(tmp_path, reach_questions):
    qa, model = qa_and_model(tmp_path)
    module = DPOModel(model, beta=0.1)
    assert not any(p.requires_grad for p in module.reference.parameters())
    item = reach_questions[1]
    batch = qa.batch([qa.sample(item, item["answer"]), qa.sample(item, item["rejected"])])
    out = module(batch)
    assert out["loss"].item() == pytest.approx(math.log(2), abs=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in module.reference.parameters())


def test_posttrain_configs_load_and_reject_bad_values():
    for kind in ("sft", "dpo"):
        cfg = load_config(PostTrainConfig, data_dir("configs") / "posttrain" / f"{kind}.yaml")
        assert cfg.kind == kind
    with pytest.raises(ConfigError, match="beta"):
        load_config(PostTrainConfig, data_dir("configs") / "posttrain" / "dpo.yaml", ["beta=0"])
    with pytest.raises(ConfigError, match="data.tasks"):
        load_config(PostTrainConfig, None, ["data.tasks=[]"])


@pytest.mark.slow
def test_sft_then_dpo_runs_from_config(tmp_path):
    sft = posttrain(tiny("sft", tmp_path / "sft"))
    assert (tmp_path / "sft" / "model" / "model.safetensors").is_file()
    dpo = posttrain(
        tiny(
            "dpo",
            tmp_path / "dpo",
            "init.mode=pretrained",
            f"init.pretrained={tmp_path / 'sft' / 'model'}",
        )
    )
    saved = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert saved["kind"] == "dpo" and dpo["steps"] == sft["steps"] == 2
    assert 0 <= saved["after"]["preference_accuracy"] <= 1
