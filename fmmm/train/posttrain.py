"""Post-training from config: supervised instruction tuning (kind: sft) and DPO (kind: dpo).

    python -m fmmm.train configs/posttrain/sft.yaml
    python -m fmmm.train configs/posttrain/dpo.yaml      # starts from the SFT model

The built-in data set is derived from the task suite: scenes are rendered from the MuJoCo tasks at
seeded initial states and asked questions whose answers the simulator knows ("Which object is
closest to the gripper?" -> "the red cube."). SFT trains on the answer tokens only; DPO prefers the
true answer over a wrong one (another object of the scene, another count) against a frozen
reference model (Rafailov et al. 2023). Both evaluate on held-out scenes before and after training
(greedy answer accuracy, preference accuracy) and write `out_dir/summary.json` and `out_dir/model/`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fmmm.config import load_config
from fmmm.models.multimodal import MultimodalConfig
from fmmm.objectives.dpo import DPOLoss, sequence_logprobs
from fmmm.tokenizers.sequence import Modality, MultimodalBatch, Segment, pack_samples
from fmmm.train.recipe import InitConfig, Run, RunResult, start_model
from fmmm.train.trainer import TrainerConfig
from fmmm.train.vla import RENAMED, small_vla_model

KINDS = ("sft", "dpo")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")


@dataclass
class SceneDataConfig:
    """The built-in question set: which tasks' scenes, how many, at which render size."""

    tasks: list[str] = field(default_factory=lambda: ["reach", "pick_place", "stack"])
    scenes: int = 300  # training scenes (three questions each)
    eval_scenes: int = 40  # held-out scenes, drawn from the evaluation seed stream
    seed: int = 0
    image_size: int = 32

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("data.tasks must name at least one task")
        if self.scenes < 1 or self.eval_scenes < 1:
            raise ValueError("data.scenes and data.eval_scenes must be >= 1")
        if self.seed < 0 or self.image_size < 8:
            raise ValueError("data.seed must be >= 0 and data.image_size >= 8")


@dataclass
class PostTrainConfig:
    """An SFT or DPO run: data, starting model, objective and training."""

    RENAMED: ClassVar[dict[str, str]] = RENAMED
    kind: str = "sft"
    out_dir: str = "runs/posttrain/sft"
    data: SceneDataConfig = field(default_factory=SceneDataConfig)
    model: MultimodalConfig = field(default_factory=small_vla_model)  # with init.mode=scratch
    init: InitConfig = field(default_factory=InitConfig)
    beta: float = 0.1  # DPO temperature
    max_answer_tokens: int = 12
    train: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.max_answer_tokens < 1:
            raise ValueError("max_answer_tokens must be >= 1")


def scene_questions(
    tasks: list[str], scenes: int, seed: int, split: str, image_size: int
) -> list[dict[str, Any]]:
    """Rendered scenes with questions, true answers and wrong (rejected) answers."""
    import fmmm.envs
    from fmmm.envs.seeds import episode_seed

    unknown = set(tasks) - set(fmmm.envs.task_names())
    if unknown:
        raise ValueError(f"unknown tasks in data.tasks: {', '.join(sorted(unknown))}")
    envs = {task: fmmm.envs.make_env(task, image_size=image_size) for task in tasks}
    items = []
    for index in range(scenes):
        task = tasks[index % len(tasks)]
        env = envs[task]
        observation, _ = env.reset(seed=episode_seed(task, seed, index, split))
        scene = env.task
        names = list(scene.objects)
        gripper = scene.ee_pos(env.data)
        distances = [float(np.linalg.norm(scene.object_pos(env.data, n) - gripper)) for n in names]
        order = [names[i] for i in np.argsort(distances)]
        image = observation["agentview"]
        count = len(names)
        wrong_count = count + 1 if count < len(NUMBERS) - 1 else count - 1
        questions = [("How many objects are on the table?", NUMBERS[count], NUMBERS[wrong_count])]
        if count >= 2:
            label = scene.labels
            questions += [
                (
                    "Which object is closest to the gripper?",
                    f"the {label[order[0]]}",
                    f"the {label[order[-1]]}",
                ),
                (
                    "Which object is farthest from the gripper?",
                    f"the {label[order[-1]]}",
                    f"the {label[order[0]]}",
                ),
            ]
        for question, answer, rejected in questions:
            items.append(
                {"task": task, "image": image, "question": question, "answer": answer + ".",
                 "rejected": rejected + "."}
            )  # fmt: skip
    for env in envs.values():
        env.close()
    return items


class QuestionAnswering:
    """Turns scene questions into token sequences with a `SequenceBuilder`."""

    def __init__(self, builder: Any):
        self.builder = builder

    def prompt(self, item: dict[str, Any]) -> list[Segment]:
        """BOS, the image and the question as one bidirectional prefix."""
        text = self.builder.text_tokenizer
        image = torch.as_tensor(np.asarray(item["image"])).permute(2, 0, 1)
        segments = [Segment(Modality.TEXT, ids=[text.bos_id], prefix=True)]
        segments += self.builder.image(image, prefix=True)
        segments += self.builder.text(item["question"], prefix=True, loss=False)
        return segments

    def sample(self, item: dict[str, Any], answer: str) -> list[Segment]:
        """Prompt, then the answer and EOS: the only tokens with loss."""
        return self.prompt(item) + self.builder.text(" " + answer, loss=True, eos=True)

    def batch(self, samples: list[list[Segment]]) -> MultimodalBatch:
        length = max(sum(len(s) for s in sample) for sample in samples)
        return pack_samples(samples, length, pack=False)


class SFTModel(nn.Module):
    """Next-token loss of the wrapped MultimodalModel on the answer tokens (the batch's targets)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: MultimodalBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(batch)
        if "loss" not in out:
            raise ValueError("the batch has no answer tokens to train on")
        return out["loss"], {"ce_loss": out["ce_loss"].detach()}


class DPOModel(nn.Module):
    """DPO between the trained model and a frozen copy of its starting point."""

    def __init__(self, model: nn.Module, beta: float):
        super().__init__()
        self.model = model
        self.reference = copy.deepcopy(model).requires_grad_(False).eval()
        self.objective = DPOLoss(beta)

    def train(self, mode: bool = True) -> DPOModel:
        super().train(mode)
        self.reference.eval()
        return self

    def forward(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        """Rows [0, B) hold the chosen answers, rows [B, 2B) the rejected ones, same prompts."""
        logits = self.model(batch)["logits"]
        with torch.no_grad():
            reference = self.reference(batch)["logits"]
        return self.objective(logits, reference, batch.targets)


@torch.no_grad()
def evaluate_answers(
    model: nn.Module, qa: QuestionAnswering, items: list[dict[str, Any]], max_tokens: int
) -> dict[str, float]:
    """Greedy answer accuracy (exact text) and preference accuracy (chosen more likely)."""
    text = qa.builder.text_tokenizer
    was_training = model.training
    model.eval()
    correct = preferred = 0
    for item in items:
        prompt = qa.prompt(item)
        batch = qa.batch([prompt])
        length = batch.input_ids.shape[1]
        cache = model.new_cache(1, length + max_tokens)
        logits = model.prefill(batch, cache)["logits"][0, -1]
        generated: list[int] = []
        for step in range(max_tokens):
            token = int(logits[: text.vocab_size].argmax())
            if token == text.eos_id:
                break
            generated.append(token)
            if step + 1 < max_tokens:
                ids = torch.tensor([[token]])
                positions = torch.tensor([[[length + step, 0, 0]]])
                logits = model.decode(ids, positions, cache, int(Modality.TEXT))["logits"][0, -1]
        answer = text.decode([generated])[0].strip() if generated else ""
        correct += answer == item["answer"]
        pair = qa.batch([qa.sample(item, item["answer"]), qa.sample(item, item["rejected"])])
        scores = sequence_logprobs(model(pair)["logits"], pair.targets)
        preferred += bool(scores[0] > scores[1])
    model.train(was_training)
    return {"answer_accuracy": correct / len(items), "preference_accuracy": preferred / len(items)}


def build_model(cfg: PostTrainConfig) -> tuple[Any, Any]:
    """Starting MultimodalModel and its sequence builder."""
    from fmmm.models.factory import builder_for

    model, tokenizers, _ = start_model(cfg.init, cfg.model)
    return model, builder_for(model.config, tokenizers)


def posttrain(cfg: PostTrainConfig) -> dict[str, Any]:
    """Run SFT or DPO as configured; returns the summary also written to out_dir/summary.json."""
    from fmmm.models.factory import builder_tokenizers
    from fmmm.train.data import DatasetStream
    from fmmm.train.trainer import Trainer

    run = Run(cfg)
    data = cfg.data
    train_items, eval_items = run.main_first(
        lambda: [
            scene_questions(data.tasks, count, data.seed, split, data.image_size)
            for count, split in ((data.scenes, "train"), (data.eval_scenes, "eval"))
        ]
    )
    model, builder = build_model(cfg)
    qa = QuestionAnswering(builder)
    before = evaluate_answers(model, qa, eval_items, cfg.max_answer_tokens)
    if cfg.kind == "sft":
        module: nn.Module = SFTModel(model)
        samples = [qa.sample(item, item["answer"]) for item in train_items]
        stream = DatasetStream(samples, qa.batch, seed=cfg.train.seed)
    else:
        module = DPOModel(model, cfg.beta)
        pairs = [
            (qa.sample(item, item["answer"]), qa.sample(item, item["rejected"]))
            for item in train_items
        ]

        def collate(batch_pairs: list[tuple[list[Segment], list[Segment]]]) -> MultimodalBatch:
            return qa.batch([p[0] for p in batch_pairs] + [p[1] for p in batch_pairs])

        stream = DatasetStream(pairs, collate, seed=cfg.train.seed)
    trainer = Trainer(
        cfg.train,
        module,
        stream,
        run.out_dir,
        accelerator=run.accelerator,
        count_tokens=lambda batch: int((batch.sample_ids > 0).sum()),
    )
    result = trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.module).model
    after = evaluate_answers(trained, qa, eval_items, cfg.max_answer_tokens)
    if run.is_main:
        trained.save_pretrained(run.out_dir / "model", tokenizers=builder_tokenizers(builder))
    summary = run.finish(
        result,
        {
            "train_questions": len(train_items),
            "eval_questions": len(eval_items),
            "before": before,
            "after": after,
            "model_dir": str(run.out_dir / "model"),
        },
    ).summary
    print(
        f"{cfg.kind}: answer accuracy {before['answer_accuracy']:.1%} -> {after['answer_accuracy']:.1%}, "
        f"preference accuracy {before['preference_accuracy']:.1%} -> "
        f"{after['preference_accuracy']:.1%} on {len(eval_items)} held-out questions"
    )
    return summary


def run(config_path: str, overrides: list[str]) -> RunResult:
    """Runner for `python -m fmmm.train` (kind: sft or dpo)."""
    summary = posttrain(load_config(PostTrainConfig, config_path, overrides))
    return RunResult(summary["status"], summary)
