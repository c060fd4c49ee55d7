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
from typing import Any

import numpy as np
import torch

from fmmm.config import config_to_dict, load_config, save_config
from fmmm.policies.lora import LoRAConfig
from fmmm.policies.vla import ACTION_DIM, VLA, PatchNormalizer, VLAConfig
from fmmm.tokenizers.sequence import Modality, MultimodalBatch
from fmmm.train.trainer import TrainerConfig
from fmmm.utils.io import atomic_write_json

ADAPTATIONS = ("full", "frozen", "lora")
INITS = ("scratch", "pretrained", "pretrained_shape")


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


@dataclass
class ModelConfig:
    """Starting point: a pretrained MultimodalModel folder or a fresh model of a given shape."""

    # scratch: a fresh model shaped by the fields below; pretrained: the weights in `pretrained`;
    # pretrained_shape: the pretrained model's architecture with fresh weights (the control run).
    init: str = "scratch"
    pretrained: str = ""  # folder written by MultimodalModel.save_pretrained
    if_missing: str = "error"  # pretrained folder absent: error | scratch | pretrain
    pretrain_config: str = ""  # with if_missing=pretrain: the pretraining config to run first
    pretrain_overrides: list[str] = field(default_factory=list)  # "key=value" for that config
    # Shape of a model built from scratch (ignored when a pretrained model is loaded).
    preset: str = "debug"
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn_hidden: int = 256
    text_vocab_size: int = 512
    action_bins: int = 256
    image_size: int = 32
    patch_size: int = 8
    vision_tower: str = ""  # "" linear patches, "conv" convolutional stem, or "timm:<name>"
    vision_film: bool = False  # conv stem FiLM-conditioned on the instruction (RT-1)
    conv_channels: int = 32  # conv stem width

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"model.init must be one of {INITS}, got {self.init!r}")
        if self.if_missing not in ("error", "scratch", "pretrain"):
            raise ValueError(
                f"model.if_missing must be error, scratch or pretrain, got {self.if_missing!r}"
            )
        if self.init != "scratch" and not self.pretrained:
            raise ValueError(f"model.init={self.init} needs model.pretrained (a model folder)")
        if self.vision_film and self.vision_tower != "conv":
            raise ValueError("model.vision_film needs model.vision_tower=conv")
        if self.if_missing == "pretrain" and not self.pretrain_config:
            raise ValueError("model.if_missing=pretrain needs model.pretrain_config")


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

    kind: str = "vla"
    task: str = "reach"
    out_dir: str = "runs/vla/reach"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: VLAConfig = field(default_factory=VLAConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    train: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.kind != "vla":
            raise ValueError(f"kind must be 'vla' for this runner, got {self.kind!r}")
        if not self.out_dir:
            raise ValueError("out_dir must be set")


@dataclass
class RunResult:
    """What `python -m fmmm.train` reads back: the status and the run summary."""

    status: str
    summary: dict[str, Any]


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
                action_masks.append((steps < length).repeat_interleave(ACTION_DIM))
        self.prefixes = prefixes
        self.action_ids = torch.stack(action_ids)  # (N, chunk * 7) bins
        self.action_masks = torch.stack(action_masks)  # (N, chunk * 7) bool, False past the end
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
    if actions.shape[1] != ACTION_DIM:
        raise ValueError(f"dataset actions are {actions.shape[1]}-D, the VLA expects {ACTION_DIM}")
    action_tokenizer = ActionTokenizer(num_bins=num_bins).fit(torch.from_numpy(actions))
    return action_tokenizer, StateNormalizer().fit(torch.from_numpy(states))


def pretrained_dir(cfg: ModelConfig) -> Path | None:
    """The pretrained model folder to start from, pretraining it first if the config says so."""
    if cfg.init == "scratch":
        return None
    path = Path(cfg.pretrained)
    if (path / "config.json").is_file():
        return path
    if cfg.if_missing == "scratch":
        print(f"no pretrained model at {path}: training from scratch (model.if_missing=scratch)")
        return None
    if cfg.if_missing == "pretrain":
        from fmmm.train.runners import run

        run(cfg.pretrain_config, list(cfg.pretrain_overrides))
        if (path / "config.json").is_file():
            return path
        raise ValueError(f"pretraining {cfg.pretrain_config} did not write a model to {path}")
    raise ValueError(f"no pretrained model at {path} (set model.if_missing to scratch or pretrain)")


def pretrained_text_tokenizer(source: Path, vocab_size: int) -> Any:
    """The text tokenizer saved with a pretrained model (beside it or in tokenizers/text)."""
    from fmmm.models.multimodal import TOKENIZERS_DIR
    from fmmm.tokenizers.text import TEXT_META_FILE, TextTokenizer, default_text_tokenizer

    for directory in (source / TOKENIZERS_DIR / "text", source):
        if (directory / TEXT_META_FILE).is_file():
            return TextTokenizer.load(directory)
    return default_text_tokenizer(vocab_size)


def build_vla(cfg: VLARunConfig, dataset: Any) -> tuple[VLA, dict[str, Any]]:
    """The VLA to adapt, its tokenizers fitted on `dataset`; also a description of its origin."""
    from fmmm.models.backbone import preset
    from fmmm.models.multimodal import MultimodalConfig, MultimodalModel
    from fmmm.tokenizers.image import ImageTokenizer
    from fmmm.tokenizers.sequence import SequenceBuilder
    from fmmm.tokenizers.text import default_text_tokenizer

    state_dim = int(dataset.features["observation.state"]["shape"][0])
    source = pretrained_dir(cfg.model)
    if source is None:
        m = cfg.model
        backbone = preset(
            m.preset,
            dim=m.dim,
            n_layers=m.n_layers,
            n_heads=m.n_heads,
            n_kv_heads=m.n_heads,
            ffn_hidden=m.ffn_hidden,
            max_seq_len=1024,
        )
        config = MultimodalConfig(
            backbone=backbone,
            text_vocab_size=m.text_vocab_size,
            action_bins=m.action_bins,
            image_size=m.image_size,
            patch_size=m.patch_size,
            vision_tower=m.vision_tower,
            vision_film=m.vision_film,
            conv_channels=m.conv_channels,
            state_dim=state_dim if cfg.policy.use_state else 0,
        )
        model = MultimodalModel(config)
        text_tokenizer = default_text_tokenizer(m.text_vocab_size)
        origin = {"init": "scratch"}
    else:
        pretrained = MultimodalModel.from_pretrained(source)
        config = pretrained.config
        state = pretrained.state_dict()
        wanted = state_dim if cfg.policy.use_state else config.state_dim
        if config.state_dim != wanted:
            # A state encoder of another width (or none) is replaced by a fresh one.
            state = {k: v for k, v in state.items() if not k.startswith("encoders.state.")}
            config.state_dim = wanted
        model = MultimodalModel(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not key.startswith("encoders.state.") for key in missing):
            raise ValueError(f"{source} does not match its own config ({missing + unexpected})")
        if cfg.model.init == "pretrained_shape":
            model = MultimodalModel(config)
        text_tokenizer = pretrained_text_tokenizer(source, config.text_vocab_size)
        origin = {"init": cfg.model.init, "pretrained": str(source), "new_modules": sorted(missing)}
    if text_tokenizer.vocab_size > config.text_vocab_size:
        raise ValueError(
            f"text tokenizer has {text_tokenizer.vocab_size} ids, the model only {config.text_vocab_size}"
        )
    action_tokenizer, state_normalizer = fit_tokenizers(dataset, config.action_bins)
    builder = SequenceBuilder(
        text_tokenizer,
        image_tokenizer=ImageTokenizer(config.image_size, config.patch_size),
        action_tokenizer=action_tokenizer,
        state_normalizer=state_normalizer if cfg.policy.use_state else None,
        action_offset=config.action_offset,
    )
    return VLA(model, builder, cfg.policy), origin


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


def check_resumable(cfg: VLARunConfig, out_dir: Path) -> None:
    """Refuse an out_dir whose checkpoints belong to a run with another config.

    The trainer resumes from the newest checkpoint in out_dir/ckpt; one written under other
    settings (a changed model, data or step count) would be resumed as if it were this run's.
    """
    from fmmm.config import read_yaml
    from fmmm.train import checkpoint as ckpt

    saved = out_dir / "config.yaml"
    if not saved.is_file() or not ckpt.list_checkpoints(out_dir / "ckpt"):
        return
    from omegaconf import OmegaConf

    before = OmegaConf.to_container(read_yaml(saved), resolve=True)
    now = config_to_dict(cfg)
    flat_before = _flatten(before)
    flat_now = _flatten(now)
    differ = sorted(
        k for k in flat_before.keys() | flat_now.keys() if flat_before.get(k) != flat_now.get(k)
    )
    if differ:
        raise ValueError(
            f"{out_dir} holds checkpoints of a run with another config ({', '.join(differ[:5])} differ); "
            "use another out_dir or delete that one"
        )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(
            _flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}")
        )
    return flat


def train_vla(cfg: VLARunConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the summary also written to out_dir/summary.json."""
    from fmmm.eval.rollout import evaluate
    from fmmm.policies.lora import count_parameters
    from fmmm.train.data import DatasetStream
    from fmmm.train.trainer import Trainer
    from fmmm.utils.seed import seed_everything

    started = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    check_resumable(cfg, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    timings: dict[str, float] = {}

    dataset = find_or_collect(cfg)
    timings["data_seconds"] = time.perf_counter() - started

    seed_everything(cfg.train.seed)
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
        out_dir,
        count_tokens=lambda batch: int((batch.sample_ids > 0).sum()),
    )
    mark = time.perf_counter()
    result = trainer.train()
    timings["train_seconds"] = time.perf_counter() - mark
    vla = trainer.accelerator.unwrap_model(trainer.module)
    vla.eval()
    vla.save(out_dir, cfg.adaptation.mode)

    evaluation = None
    if cfg.eval.episodes:
        mark = time.perf_counter()
        results = evaluate(
            str(out_dir), [cfg.task], cfg.eval.episodes, cfg.eval.seed, cfg.eval.num_envs
        )
        atomic_write_json(out_dir / "eval" / "results.json", results)
        evaluation = results["summary"][cfg.task]
        timings["eval_seconds"] = time.perf_counter() - mark
    timings["total_seconds"] = time.perf_counter() - started
    summary = {
        "task": cfg.task,
        "policy_dir": str(out_dir),
        "status": result.status,
        "steps": result.step,
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
        "config": config_to_dict(cfg),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    if evaluation is not None:
        low, high = evaluation["success_ci95"]
        print(
            f"{cfg.task}: success {evaluation['success_rate']:.1%} [{low:.1%}, {high:.1%}] over "
            f"{evaluation['episodes']} held-out episodes; summary in {out_dir / 'summary.json'}"
        )
    return summary


def run(config_path: str, overrides: list[str]) -> Any:
    """Runner for `python -m fmmm.train` (kind: vla)."""
    summary = train_vla(load_config(VLARunConfig, config_path, overrides))
    return RunResult(summary["status"], summary)
