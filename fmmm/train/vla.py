"""`python -m fmmm.train configs/vla/<task>.yaml` (kind: vla): demonstrations to an evaluated VLA.

The run finds (or collects) scripted demonstrations, fits the action tokenizer and state
normalizer on them, builds the VLA from a pretrained `MultimodalModel` (or from scratch), adapts it
(full fine-tuning, frozen backbone, or LoRA) with the shared `Trainer`, saves the policy into
`out_dir` (so `python -m fmmm.eval --policy OUT_DIR` works), evaluates it in simulation on held-out
episode seeds and writes `out_dir/summary.json`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fmmm.config import load_config
from fmmm.models.backbone import TransformerConfig
from fmmm.models.multimodal import MultimodalConfig
from fmmm.policies.lora import LoRAConfig
from fmmm.policies.vla import VLA, PatchNormalizer, VLAConfig
from fmmm.tokenizers.sequence import Modality, MultimodalBatch
from fmmm.train.recipe import InitConfig, Run, RunResult, start_model
from fmmm.train.trainer import TrainerConfig
from fmmm.utils.io import atomic_write_json

ADAPTATIONS = ("full", "frozen", "lora")
# Keys of configs written before the model section became a MultimodalConfig.
RENAMED = {
    "run_dir": "out_dir",
    **{f"model.{k}": f"init.{k}" for k in ("pretrained", "if_missing", "pretrain_config")},
    "model.init": "init.mode",
    "model.pretrain_overrides": "init.pretrain_overrides",
    **{f"model.{k}": f"model.backbone.{k}" for k in ("dim", "n_layers", "n_heads", "ffn_hidden")},
    "model.preset": "model.backbone (give its fields)",
}


@dataclass
class DataConfig:
    """Where the demonstrations are, and how to collect them when they are not there yet."""

    dataset: str = ""  # dataset folder; "" means runs/demos/<task>_<episodes>_seed<seed>[_noise<n>]
    episodes: int = 200
    seed: int = 0  # base seed of the training episode stream (disjoint from evaluation seeds)
    workers: int = 2  # parallel collection processes
    # DART: execute the expert's actions with Gaussian noise of this std, record the clean ones,
    # so the demonstrations show recoveries from the states a learned policy drifts into.
    noise: float = 0.0

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"data.episodes must be >= 1, got {self.episodes}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"data.noise must be in [0, 1], got {self.noise}")
        if self.seed < 0 or self.workers < 1:
            raise ValueError("data.seed must be >= 0 and data.workers >= 1")


def small_vla_model() -> MultimodalConfig:
    """The default VLA model: 4 layers of width 128 over 32 px images in 8 px patches."""
    backbone = TransformerConfig(dim=128, n_layers=4, n_heads=4, ffn_hidden=256, max_seq_len=1024)
    return MultimodalConfig(backbone=backbone, text_vocab_size=512, image_size=32, patch_size=8)


@dataclass
class AdaptationConfig:
    """Which parameters train: all, all but the backbone, or LoRA adapters (+ named modules)."""

    mode: str = "full"  # full | frozen | lora
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self) -> None:
        if self.mode not in ADAPTATIONS:
            raise ValueError(f"adaptation.mode must be one of {ADAPTATIONS}, got {self.mode!r}")


@dataclass
class EvalConfig:
    """Simulation evaluation at the end of the run, on held-out episode seeds."""

    episodes: int = 50
    seed: int = 0  # base seed of the evaluation stream (never used for demonstrations)
    num_envs: int = 2

    def __post_init__(self) -> None:
        if self.episodes < 0 or self.seed < 0 or self.num_envs < 1:
            raise ValueError("eval.episodes and eval.seed must be >= 0, eval.num_envs >= 1")


@dataclass
class VLARunConfig:
    """A whole VLA run: task, data, model, policy, adaptation, training and evaluation."""

    RENAMED: ClassVar[dict[str, str]] = RENAMED
    kind: str = "vla"
    task: str = "reach"
    out_dir: str = "runs/vla/reach"
    data: DataConfig = field(default_factory=DataConfig)
    # shape of a model built from scratch (init.mode=scratch); state_dim comes from the dataset
    model: MultimodalConfig = field(default_factory=small_vla_model)
    init: InitConfig = field(default_factory=InitConfig)
    policy: VLAConfig = field(default_factory=VLAConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    train: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.kind != "vla":
            raise ValueError(f"kind must be 'vla' for this runner, got {self.kind!r}")
        if not self.out_dir:
            raise ValueError("out_dir must be set")


class FrameSamples:
    """Training samples, one per demonstration frame: the prefix, then the next action chunk.

    All samples are built once into one padded `MultimodalBatch` table; `batch(rows)` slices it, so
    a training batch costs a few index operations.
    """

    def __init__(self, dataset: Any, vla: VLA):
        from fmmm.datasets.robot import ACTION_KEY, IMAGE_PREFIX, STATE_KEY

        chunk = vla.config.chunk
        prefixes, action_ids, action_masks = [], [], []
        tokenizer = vla.builder.action_tokenizer
        for index in range(dataset.num_episodes):
            episode = dataset.episode(index)
            instruction = dataset.instruction(index)
            bins = tokenizer.encode(torch.tensor(episode[ACTION_KEY], dtype=torch.float64))
            length = len(bins)
            for frame in range(length):
                observation = {"instruction": instruction, "state": episode[STATE_KEY][frame]}
                for camera in vla.config.cameras:
                    observation[camera] = episode[IMAGE_PREFIX + camera][frame]
                prefixes.append(vla.prefix_segments(observation))
                # Steps past the episode end repeat the last action but carry no loss.
                steps = torch.arange(frame, frame + chunk)
                action_ids.append(bins[steps.clamp(max=length - 1)].flatten())
                action_masks.append((steps < length).repeat_interleave(vla.action_dim))
        self.prefixes = prefixes
        self.action_ids = torch.stack(action_ids)  # (N, chunk * D) bins
        self.action_masks = torch.stack(action_masks)  # (N, chunk * D) bool, False past the end
        self.table = vla.training_batch(prefixes, self.action_ids, self.action_masks)
        self.lengths = (self.table.sample_ids > 0).sum(dim=1)  # (N,)
        self.feature_starts, self.feature_counts = {}, {}
        for key in self.table.features:
            counts = (self.table.modality == int(Modality[key.upper()])).sum(dim=1)
            self.feature_counts[key] = counts
            self.feature_starts[key] = counts.cumsum(0) - counts

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> int:
        return index

    def batch(self, rows: list[int]) -> MultimodalBatch:
        """The samples at `rows`, trimmed to the longest of them."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.lengths[rows].max())
        table = self.table
        features = {}
        for key, value in table.features.items():
            counts = self.feature_counts[key][rows]
            starts = torch.repeat_interleave(self.feature_starts[key][rows], counts)
            offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(
                counts.cumsum(0) - counts, counts
            )
            features[key] = value[starts + offsets]
        return MultimodalBatch(
            input_ids=table.input_ids[rows, :width],
            modality=table.modality[rows, :width],
            positions=table.positions[rows, :width],
            sample_ids=table.sample_ids[rows, :width],
            prefix=table.prefix[rows, :width],
            attention_mask=table.attention_mask[rows, :width, :width],
            targets=table.targets[rows, :width],
            features=features,
        )


def dataset_dir(cfg: VLARunConfig) -> Path:
    """The demonstrations folder a run reads (collected there when missing)."""
    if cfg.data.dataset:
        return Path(cfg.data.dataset)
    noise = f"_noise{cfg.data.noise:g}" if cfg.data.noise else ""
    return Path("runs/demos") / f"{cfg.task}_{cfg.data.episodes}_seed{cfg.data.seed}{noise}"


def find_or_collect(cfg: VLARunConfig) -> Any:
    """Open the demonstration dataset, collecting it with the scripted expert if absent."""
    from fmmm.collect import collect
    from fmmm.datasets.robot import RobotDataset

    root = dataset_dir(cfg)
    if not (root / "meta" / "info.json").is_file():
        collect(
            cfg.task,
            cfg.data.episodes,
            root,
            seed=cfg.data.seed,
            workers=cfg.data.workers,
            noise=cfg.data.noise,
        )
    dataset = RobotDataset(root)
    if dataset.num_episodes == 0:
        raise ValueError(f"dataset {root} holds no episodes")
    return dataset


def fit_tokenizers(dataset: Any, num_bins: int) -> tuple[Any, Any]:
    """Action tokenizer and state normalizer fitted on every frame of the dataset."""
    from fmmm.datasets.robot import ACTION_KEY, STATE_KEY
    from fmmm.tokenizers.action import ActionTokenizer, StateNormalizer

    episodes = [dataset.episode(i) for i in range(dataset.num_episodes)]
    actions = np.concatenate([e[ACTION_KEY] for e in episodes]).astype(np.float64)
    states = np.concatenate([e[STATE_KEY] for e in episodes]).astype(np.float64)
    action_tokenizer = ActionTokenizer(num_bins=num_bins).fit(torch.from_numpy(actions))
    return action_tokenizer, StateNormalizer().fit(torch.from_numpy(states))


def build_vla(cfg: VLARunConfig, dataset: Any) -> tuple[VLA, dict[str, Any]]:
    """The VLA to adapt, its tokenizers fitted on `dataset`; also a description of its origin."""
    from fmmm.models.factory import builder_for

    state_dim = int(dataset.features["observation.state"]["shape"][0])
    use_state = cfg.policy.use_state
    model, tokenizers, origin = start_model(cfg.init, cfg.model, state_dim if use_state else None)
    action_tokenizer, state_normalizer = fit_tokenizers(dataset, model.config.action_bins)
    tokenizers.update(action=action_tokenizer, state=state_normalizer if use_state else None)
    return VLA(model, builder_for(model.config, tokenizers), cfg.policy), origin


def fit_patch_normalizer(dataset: Any, vla: VLA, batch: int = 256) -> PatchNormalizer:
    """Per-camera patch statistics over every demonstration frame."""
    from fmmm.datasets.robot import IMAGE_PREFIX

    tokenizer = vla.builder.image_tokenizer
    patches: dict[str, list[torch.Tensor]] = {camera: [] for camera in vla.config.cameras}
    for index in range(dataset.num_episodes):
        episode = dataset.episode(index)
        for camera in vla.config.cameras:
            frames = torch.tensor(episode[IMAGE_PREFIX + camera]).permute(0, 3, 1, 2)
            for start in range(0, len(frames), batch):
                patches[camera].append(tokenizer.encode(frames[start : start + batch])[0])
    return PatchNormalizer.fit({camera: torch.cat(rows) for camera, rows in patches.items()})


def adapt(vla: VLA, cfg: AdaptationConfig) -> None:
    """Choose the trainable parameters (and wrap with LoRA adapters) as the config says."""
    from fmmm.policies.lora import add_lora

    if cfg.mode == "full":
        vla.model.requires_grad_(True)
    elif cfg.mode == "frozen":
        # The backbone stays as pretrained; encoders, embeddings and LM head train.
        vla.model.requires_grad_(True)
        vla.model.backbone.requires_grad_(False)
    else:
        vla.model = add_lora(vla.model, cfg.lora)


def train_vla(cfg: VLARunConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the summary also written to out_dir/summary.json."""
    import fmmm.envs
    from fmmm.eval.rollout import evaluate
    from fmmm.policies.lora import count_parameters
    from fmmm.train.data import DatasetStream
    from fmmm.train.trainer import Trainer

    run = Run(cfg)
    timings: dict[str, float] = {}
    dataset = run.main_first(lambda: find_or_collect(cfg))
    timings["data_seconds"] = run.elapsed()

    vla, origin = build_vla(cfg, dataset)
    if cfg.policy.normalize_patches:
        vla.patch_normalizer = fit_patch_normalizer(dataset, vla)
    adapt(vla, cfg.adaptation)
    trainable, total = count_parameters(vla)
    samples = FrameSamples(dataset, vla)
    stream = DatasetStream(samples, samples.batch, seed=cfg.train.seed)
    trainer = Trainer(
        cfg.train,
        vla,
        stream,
        run.out_dir,
        accelerator=run.accelerator,
        count_tokens=lambda batch: int((batch.sample_ids > 0).sum()),
    )
    mark = time.perf_counter()
    result = trainer.train()
    timings["train_seconds"] = time.perf_counter() - mark
    vla = trainer.accelerator.unwrap_model(trainer.module)
    vla.eval()
    evaluation = None
    if run.is_main:
        vla.save(run.out_dir, cfg.adaptation.mode)
        if cfg.eval.episodes:
            mark = time.perf_counter()
            tasks = fmmm.envs.expand_tasks(cfg.task)  # a suite (metaworld:mt10) evaluates each
            results = evaluate(
                str(run.out_dir), tasks, cfg.eval.episodes, cfg.eval.seed, cfg.eval.num_envs
            )
            atomic_write_json(run.out_dir / "eval" / "results.json", results)
            evaluation = results["summary"] if len(tasks) > 1 else results["summary"][cfg.task]
            timings["eval_seconds"] = time.perf_counter() - mark
    summary = run.finish(
        result,
        {
            "task": cfg.task,
            "policy_dir": str(run.out_dir),
            "final_loss": result.metrics.get("loss"),
            "final_action_accuracy": result.metrics.get("action_accuracy"),
            "demonstrations": dataset.num_episodes,
            "training_frames": len(samples),
            "adaptation": cfg.adaptation.mode,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_fraction": trainable / total,
            **origin,
            "eval": evaluation,
            "eval_seed": cfg.eval.seed,
            **timings,
        },
    ).summary
    if evaluation is not None:
        per_task = evaluation if "success_rate" not in evaluation else {cfg.task: evaluation}
        for task, result in per_task.items():
            low, high = result["success_ci95"]
            print(
                f"{task}: success {result['success_rate']:.1%} [{low:.1%}, {high:.1%}] over "
                f"{result['episodes']} held-out episodes"
            )
        print(f"summary in {run.out_dir / 'summary.json'}")
    return summary


def run(config_path: str, overrides: list[str]) -> RunResult:
    """Runner for `python -m fmmm.train` (kind: vla)."""
    summary = train_vla(load_config(VLARunConfig, config_path, overrides))
    return RunResult(summary["status"], summary)
