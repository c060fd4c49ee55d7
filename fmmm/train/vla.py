"""`python -m fmmm.train configs/vla/<task>.yaml` (kind: vla): demonstrations to an evaluated VLA.

The run finds (or collects) scripted demonstrations, fits the action tokenizer and state
normalizer on them, builds the VLA from a pretrained `MultimodalModel` (or from scratch), adapts it
(full fine-tuning, frozen backbone, or LoRA) with the shared `Trainer`, saves the policy into
`out_dir` (so `python -m fmmm.eval --policy OUT_DIR` works), evaluates it in simulation on held-out
episode seeds and writes `out_dir/summary.json`.
"""

from __future__ import annotations

import json
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
from fmmm.policies.vla import VLA, ActionBatch, PatchNormalizer, VLAConfig
from fmmm.tokenizers.sequence import IGNORE_INDEX, MultimodalBatch
from fmmm.train.recipe import InitConfig, Run, RunResult, policy_run, start_model
from fmmm.train.trainer import TrainerConfig
from fmmm.utils.io import atomic_write_bytes, atomic_write_json

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
    # Share of each task in every batch when the dataset holds several (a suite): task -> weight;
    # tasks not named get weight 1, so by default every task is drawn equally often.
    task_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for task, weight in self.task_weights.items():
            if not (isinstance(weight, (int, float)) and 0 <= weight < float("inf")):
                raise ValueError(
                    f"data.task_weights.{task} must be a finite weight >= 0, got {weight!r}"
                )
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

    episodes: int = 50  # test episodes per task, reported at the end
    seed: int = 0  # base seed of the evaluation streams (never used for demonstrations)
    num_envs: int = 2
    # Validation: every `train.eval_every` steps (and at the end) the policy runs `val_episodes`
    # per task on the validation seed split (disjoint from training and test seeds); the weights
    # with the best validation success are the ones saved and tested. 0: no validation.
    val_episodes: int = 0
    video: bool = True  # one validation rollout per evaluation as mp4 under out_dir/val_videos

    def __post_init__(self) -> None:
        if self.episodes < 0 or self.seed < 0 or self.num_envs < 1 or self.val_episodes < 0:
            raise ValueError(
                "eval.episodes, eval.val_episodes and eval.seed must be >= 0, eval.num_envs >= 1"
            )


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


class DemoFrames:
    """Every frame of a demonstration dataset as flat arrays: camera images (uint8), states,
    actions, and per frame its episode; per episode its instruction and task.

    Reading thousands of parquet episodes is the slow part of preparing a run, so the arrays are
    cached beside the demonstrations (`DIR/.cache/frames-<key>.safetensors`, the key hashing the
    dataset's metadata and the cameras); a second run with the same data loads them in seconds.
    """

    def __init__(self, dataset: Any, cameras: list[str], default_task: str, progress: bool = True):
        from safetensors.torch import load_file

        from fmmm.datasets.robot import IMAGE_PREFIX

        missing = [c for c in cameras if IMAGE_PREFIX + c not in dataset.camera_keys]
        if missing:
            raise ValueError(f"dataset {dataset.root} has no camera {missing[0]!r}")
        path = frames_cache_path(dataset, cameras)
        if path.is_file():
            tensors = load_file(path)
        else:
            tensors = self._read(dataset, cameras, progress)
            save_tensors(path, tensors)
        self.images = {c: tensors[f"image.{c}"] for c in cameras}  # (N, H, W, 3) uint8
        self.states, self.actions = tensors["state"], tensors["action"]  # (N, S), (N, D) float32
        self.episode = tensors["episode"]  # (N,) long
        self.lengths = tensors["lengths"]  # (E,) long
        self.starts = self.lengths.cumsum(0) - self.lengths
        self.frame = torch.arange(len(self.episode)) - self.starts[self.episode]
        self.instructions = [dataset.instruction(i) for i in range(dataset.num_episodes)]
        self.tasks = [row.get("env_task", default_task) for row in dataset.episodes]

    def __len__(self) -> int:
        return len(self.episode)

    @staticmethod
    def _read(dataset: Any, cameras: list[str], progress: bool) -> dict[str, torch.Tensor]:
        from fmmm.datasets.robot import ACTION_KEY, IMAGE_PREFIX, STATE_KEY
        from fmmm.utils.progress import progress as progress_bar

        columns = [ACTION_KEY, STATE_KEY] + [IMAGE_PREFIX + c for c in cameras]
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        lengths = []
        episodes = range(dataset.num_episodes)
        for index in progress_bar(episodes, desc="reading demonstrations", disable=not progress):
            episode = dataset.episode(index)
            for column in columns:
                parts[column].append(episode[column])
            lengths.append(len(episode[ACTION_KEY]))
        tensors = {
            "action": torch.from_numpy(np.concatenate(parts[ACTION_KEY]).astype(np.float32)),
            "state": torch.from_numpy(np.concatenate(parts[STATE_KEY]).astype(np.float32)),
            "lengths": torch.tensor(lengths, dtype=torch.long),
        }
        tensors["episode"] = torch.repeat_interleave(torch.arange(len(lengths)), tensors["lengths"])
        for camera in cameras:
            tensors[f"image.{camera}"] = torch.from_numpy(
                np.ascontiguousarray(np.concatenate(parts[IMAGE_PREFIX + camera]))
            )
        return tensors


def frames_cache_path(dataset: Any, cameras: list[str]) -> Path:
    """Where `DemoFrames` caches a dataset's arrays: keyed by its metadata and the cameras."""
    import hashlib

    meta = Path(dataset.root) / "meta"
    digest = hashlib.sha256()
    for name in ("info.json", "episodes.jsonl"):
        digest.update((meta / name).read_bytes())
    digest.update(",".join(cameras).encode())
    return Path(dataset.root) / ".cache" / f"frames-{digest.hexdigest()[:16]}.safetensors"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors cache atomically; a cache that cannot be written is only a warning."""
    from safetensors.torch import save

    try:
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))
    except OSError as exc:
        print(f"warning: cannot cache frames at {path}: {exc}")


class FrameSamples:
    """Training samples, one per demonstration frame: the prefix, then the next action chunk.

    Frames of one episode differ only in their images, state and actions, so the token layout is
    built once per episode (a template row of one padded `MultimodalBatch`); `batch(rows)` copies
    the templates of its frames, writes their action bins in (tokens head) or attaches their
    normalized chunks (continuous heads), and tokenizes their images and states in one call per
    camera.
    """

    def __init__(self, frames: DemoFrames, vla: VLA):
        self.frames, self.vla = frames, vla
        chunk, dims = vla.config.chunk, vla.action_dim
        # chunk steps of every frame; steps past the episode end repeat the last action, no loss
        steps = frames.frame[:, None] + torch.arange(chunk)[None]  # (N, chunk)
        lengths = frames.lengths[frames.episode][:, None]
        self.mask = steps < lengths  # (N, chunk)
        self.chunk_rows = frames.starts[frames.episode][:, None] + steps.clamp(max=lengths - 1)
        if vla.config.head == "tokens":
            tokenizer = vla.builder.action_tokenizer
            self.bins = tokenizer.encode(frames.actions.double())  # (N, D)
        else:
            self.unit_actions = vla.normalize_actions(frames.actions)  # (N, D)
        templates = []
        for episode, instruction in enumerate(frames.instructions):
            first = int(frames.starts[episode])
            observation = {"instruction": instruction, "state": frames.states[first].numpy()}
            for camera in vla.config.cameras:
                observation[camera] = frames.images[camera][first].numpy()
            templates.append(vla.prefix_segments(observation))
        zeros = torch.zeros(len(templates), chunk * dims, dtype=torch.long)
        self.table = vla.training_batch(templates, zeros, torch.ones_like(zeros, dtype=torch.bool))
        self.table.features = {}  # filled per batch
        self.lengths = (self.table.sample_ids > 0).sum(dim=1)  # (E,)
        self.width = chunk * dims if vla.config.head == "tokens" else chunk

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> int:
        return index

    def batch(self, rows: list[int]) -> ActionBatch:
        """The samples of frames `rows`, trimmed to the longest of them."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        vla, frames, table = self.vla, self.frames, self.table
        episodes = frames.episode[rows]
        width = int(self.lengths[episodes].max())
        batch = MultimodalBatch(
            input_ids=table.input_ids[episodes, :width].clone(),
            modality=table.modality[episodes, :width],
            positions=table.positions[episodes, :width],
            sample_ids=table.sample_ids[episodes, :width],
            prefix=table.prefix[episodes, :width],
            attention_mask=table.attention_mask[episodes, :width, :width],
            targets=table.targets[episodes, :width].clone(),
            features=self.features(rows),
        )
        chunk_rows, mask = self.chunk_rows[rows], self.mask[rows]
        if vla.config.head != "tokens":
            return ActionBatch(batch, self.unit_actions[chunk_rows], mask)
        ids = self.bins[chunk_rows].flatten(1) + vla.action_offset  # (B, chunk*D)
        ends = self.lengths[episodes]
        batch_rows = torch.arange(len(rows))[:, None]
        columns = ends[:, None] - self.width + torch.arange(self.width)[None]
        batch.input_ids[batch_rows, columns] = ids
        keep = mask.repeat_interleave(vla.action_dim, dim=1)
        batch.targets[batch_rows, columns - 1] = torch.where(keep, ids, IGNORE_INDEX)
        return ActionBatch(batch)

    def features(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image patches (standardized per camera) and normalized states of frames `rows`, in the
        order their positions appear in the rows."""
        vla = self.vla
        features = {}
        if vla.config.cameras:
            per_camera = []
            for camera in vla.config.cameras:
                images = self.frames.images[camera][rows].permute(0, 3, 1, 2)
                patches = vla.builder.image_tokenizer.encode(images)[0]  # (B, P, F)
                per_camera.append(vla.patch_normalizer.batch(camera, patches))
            features["image"] = torch.stack(per_camera, dim=1).flatten(0, 2)  # (B*C*P, F)
        if vla.config.use_state:
            states = self.frames.states[rows].double()
            features["state"] = vla.builder.state_normalizer.normalize(states).float()
        return features


def dataset_dir(cfg: VLARunConfig) -> Path:
    """The demonstrations folder a run reads (collected there when missing)."""
    if cfg.data.dataset:
        return Path(cfg.data.dataset)
    noise = f"_noise{cfg.data.noise:g}" if cfg.data.noise else ""
    return Path("runs/demos") / f"{cfg.task}_{cfg.data.episodes}_seed{cfg.data.seed}{noise}"


def find_or_collect(cfg: VLARunConfig) -> Any:
    """Open the demonstration dataset; collect it with the scripted expert only when the config
    names no `data.dataset` (the default folder under runs/demos). A named folder that does not
    exist, or one recorded for another task or with other state/action dimensions, is an error."""
    from fmmm.collect import collect
    from fmmm.datasets.robot import RobotDataset

    root = dataset_dir(cfg)
    if not (root / "meta" / "info.json").is_file():
        if cfg.data.dataset:
            raise ValueError(
                f"data.dataset {root} is not a dataset (no meta/info.json); collect one with "
                f"python -m fmmm.collect, or leave data.dataset empty to collect automatically"
            )
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
    check_dataset(cfg, dataset)
    return dataset


def check_dataset(cfg: VLARunConfig, dataset: Any) -> None:
    """The dataset was recorded for the run's task(s), with the env's state and action names."""
    import fmmm.envs

    wanted = set(fmmm.envs.expand_tasks(cfg.task))
    recorded = {row.get("env_task") for row in dataset.episodes} - {None}
    collection = dataset.info.get("collection", {})
    recorded |= set(collection.get("tasks") or [])
    if not recorded and collection.get("task"):
        recorded = set(fmmm.envs.expand_tasks(collection["task"]))
    if recorded and not recorded <= wanted:
        raise ValueError(
            f"dataset {dataset.root} holds {', '.join(sorted(recorded - wanted))} "
            f"demonstrations but the run's task is {cfg.task}"
        )
    env = fmmm.envs.env_class(next(iter(wanted)))
    for feature, names in getattr(env, "feature_names", {}).items():
        given = (dataset.features.get(feature) or {}).get("names")
        if given is not None and list(given) != list(names):
            raise ValueError(
                f"dataset {dataset.root}: {feature} is {list(given)} but the {cfg.task} env gives "
                f"{list(names)} (recorded with an older fmmm? collect it again)"
            )


def fit_tokenizers(frames: DemoFrames, num_bins: int) -> tuple[Any, Any]:
    """Action tokenizer and state normalizer fitted on every frame of the demonstrations."""
    from fmmm.tokenizers.action import ActionTokenizer, StateNormalizer

    action_tokenizer = ActionTokenizer(num_bins=num_bins).fit(frames.actions.double())
    return action_tokenizer, StateNormalizer().fit(frames.states.double())


def build_vla(cfg: VLARunConfig, dataset: Any, frames: DemoFrames) -> tuple[VLA, dict[str, Any]]:
    """The VLA to adapt, its tokenizers fitted on the demonstrations; also a description of its
    origin."""
    from fmmm.datasets.robot import ACTION_KEY, STATE_KEY
    from fmmm.models.factory import builder_for

    state_dim = int(dataset.features[STATE_KEY]["shape"][0])
    use_state = cfg.policy.use_state
    model, tokenizers, origin = start_model(cfg.init, cfg.model, state_dim if use_state else None)
    action_tokenizer, state_normalizer = fit_tokenizers(frames, model.config.action_bins)
    source = policy_run(cfg.init.pretrained) if cfg.init.mode == "pretrained" else None
    if source is not None:
        # A pretrained policy keeps the units its backbone and head learned in: its action and
        # state statistics (where the state has the same width) and its patch statistics.
        action_tokenizer = tokenizers.get("action", action_tokenizer)
        state_normalizer = tokenizers.get("state", state_normalizer)
    tokenizers.update(action=action_tokenizer, state=state_normalizer if use_state else None)
    vla = VLA(model, builder_for(model.config, tokenizers), cfg.policy)
    vla.features = {key: dataset.features[key].get("names") for key in (STATE_KEY, ACTION_KEY)}
    if source is not None:
        origin.update(load_policy_parts(vla, source))
    return vla, origin


def load_policy_parts(vla: VLA, source: Path) -> dict[str, Any]:
    """Start `vla` from the pretrained policy in run directory `source` beyond its model: the patch
    statistics, and the action head when it has the same kind and shapes. Returns what was taken."""
    from safetensors.torch import load_file

    from fmmm.models.multimodal import TOKENIZERS_DIR
    from fmmm.policies.vla import HEAD_FILE

    spec = json.loads((source / "policy.json").read_text())
    taken: dict[str, Any] = {"policy_run": str(source)}
    patch_file = source / "model" / TOKENIZERS_DIR / "patch_normalizer.safetensors"
    if patch_file.is_file():
        vla.patch_normalizer = PatchNormalizer.load(source / "model" / TOKENIZERS_DIR)
        taken["patch_statistics"] = "pretrained"
    head_file = source / HEAD_FILE
    head = vla.action_head
    if head is not None and spec.get("head") == vla.config.head and head_file.is_file():
        state = load_file(head_file)
        own = head.state_dict()
        if state.keys() == own.keys() and all(state[k].shape == own[k].shape for k in own):
            head.load_state_dict(state)
            taken["action_head"] = "pretrained"
    taken.setdefault("action_head", "fresh" if head is not None else "none")
    return taken


def fit_patch_normalizer(frames: DemoFrames, vla: VLA, batch: int = 4096) -> PatchNormalizer:
    """Per-camera patch statistics over every demonstration frame."""
    tokenizer = vla.builder.image_tokenizer

    def batches(camera: str):
        images = frames.images[camera]
        for start in range(0, len(images), batch):
            yield tokenizer.encode(images[start : start + batch].permute(0, 3, 1, 2))[0]

    return PatchNormalizer.fit_streaming({camera: batches(camera) for camera in vla.config.cameras})


def task_stream(cfg: VLARunConfig, frames: DemoFrames, samples: FrameSamples) -> Any:
    """The training stream: frames of each task drawn in proportion to `data.task_weights`."""
    from fmmm.train.data import MixtureStream

    per_frame = np.array(frames.tasks)[frames.episode.numpy()]
    names = list(dict.fromkeys(frames.tasks))
    unknown = set(cfg.data.task_weights) - set(names)
    if unknown:
        raise ValueError(
            f"data.task_weights names {', '.join(sorted(unknown))}, not in the demonstrations "
            f"({', '.join(names)})"
        )
    sources = []
    for name in names:
        weight = float(cfg.data.task_weights.get(name, 1.0))
        if weight > 0:
            sources.append((name, np.flatnonzero(per_frame == name), weight))
    return MixtureStream(sources, lambda rows, _: samples.batch(rows), seed=cfg.train.seed)


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


class Validator:
    """Success on validation episodes (their own seed split, disjoint from the demonstrations and
    the test episodes), run by the trainer every `train.eval_every` steps and at the end: logs
    `val_success/<task>` and their mean `val_success`, writes one rollout video per evaluation,
    and keeps the best weights so the run saves (and tests) the ones validation chose.

    The best weights are also written to `out_dir/validation/` (safetensors, and the step and score
    in JSON), so a resumed run still chooses among every evaluation since the start: its history
    comes back from the run's `events.jsonl`, which the trainer trims to the resume point, and the
    saved weights count only if their evaluation survived that trim. `step` reads the trainer's
    step (set by the recipe once the trainer exists).
    """

    def __init__(self, cfg: VLARunConfig, out_dir: Path):
        import fmmm.envs

        self.cfg, self.out_dir = cfg, out_dir
        self.tasks = fmmm.envs.expand_tasks(cfg.task)
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.calls = 0
        self.history: list[dict[str, float]] = []
        self.step: Any = lambda: None
        self.saved = out_dir / "validation"
        self._resumed = False

    def _resume(self) -> None:
        """Once, at the first evaluation: the evaluations before a resume and their best weights."""
        from safetensors.torch import load_file

        from fmmm.train.metrics import read_jsonl

        if self._resumed:
            return
        self._resumed = True
        events = self.out_dir / "events.jsonl"
        if not events.exists():
            return
        for row in read_jsonl(events):
            if row.get("event") == "eval" and "eval/val_success" in row:
                metrics = {k.removeprefix("eval/"): v for k, v in row.items() if k[:5] == "eval/"}
                self.history.append({**metrics, "step": row["step"]})
        self.calls = len(self.history)
        meta, weights = self.saved / "best.json", self.saved / "best.safetensors"
        if meta.exists() and weights.exists():
            best = json.loads(meta.read_text())
            steps = [(h["step"], h["val_success"]) for h in self.history]
            if (best["step"], best["val_success"]) in steps:
                self.best = (best["val_success"], best["evaluation"], load_file(weights))

    def __call__(self, module: Any) -> dict[str, float]:
        import tempfile

        from fmmm.eval.rollout import LockstepWorker
        from fmmm.policies.vla import VLAPolicy

        cfg, vla = self.cfg, module
        self._resume()
        self.calls += 1
        items = [(task, i) for task in self.tasks for i in range(cfg.eval.val_episodes)]
        with tempfile.TemporaryDirectory() as scratch:
            video_dir = Path(scratch) if cfg.eval.video else None
            worker = LockstepWorker(  # with eval.num_envs > 1 the envs step in worker processes
                "", cfg.eval.seed, "val", factory=lambda env: VLAPolicy(vla), processes=True
            )
            try:
                rows = list(worker.rows(items, cfg.eval.num_envs))
                if video_dir is not None:  # one more episode, filmed
                    filmed = LockstepWorker(
                        "", cfg.eval.seed, "val", None, str(video_dir), lambda env: VLAPolicy(vla)
                    )
                    try:
                        for row in filmed.rows([(self.tasks[self.calls % len(self.tasks)], 0)], 1):
                            target = (
                                self.out_dir / "val_videos" / f"eval{self.calls:03d}_{row['video']}"
                            )
                            target.parent.mkdir(parents=True, exist_ok=True)
                            atomic_write_bytes(target, (video_dir / row["video"]).read_bytes())
                            self._log_filmstrip(target, row["task"])
                    finally:
                        filmed.close()
            finally:
                worker.close()
        metrics = {}
        for task in self.tasks:
            outcomes = [row["success"] for row in rows if row["task"] == task]
            metrics[f"val_success/{task}"] = float(np.mean(outcomes))
        metrics["val_success"] = float(np.mean([metrics[f"val_success/{t}"] for t in self.tasks]))
        step = self.step()
        self.history.append({**metrics, "step": step})
        if self.best is None or metrics["val_success"] >= self.best[0]:  # ties: the later weights
            state = {k: v.detach().clone() for k, v in vla.state_dict().items()}
            self.best = (metrics["val_success"], self.calls, state)
            if step is not None:
                self._save_best(step)
        return metrics

    def _save_best(self, step: int) -> None:
        """The best weights, then their step and score (the JSON last: it vouches for them)."""
        from safetensors.torch import save

        score, evaluation, state = self.best
        tensors = {k: v.contiguous() for k, v in state.items()}
        self.saved.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.saved / "best.safetensors", save(tensors))
        atomic_write_json(
            self.saved / "best.json",
            {"step": step, "val_success": score, "evaluation": evaluation},
        )

    def _log_filmstrip(self, video: Path, task: str, frames: int = 8) -> None:
        """The rollout to TensorBoard as one image of `frames` evenly spaced frames (TensorBoard's
        own video summaries need moviepy; the mp4 stays under val_videos/)."""
        if not self.cfg.train.logging.tensorboard:
            return
        import imageio.v2 as imageio
        from torch.utils.tensorboard import SummaryWriter

        clip = np.stack(imageio.mimread(video))
        picked = clip[np.linspace(0, len(clip) - 1, frames).round().astype(int)]
        strip = np.concatenate(list(picked), axis=1)  # (H, frames * W, 3)
        with SummaryWriter(str(self.out_dir / "tensorboard" / "rollouts")) as writer:
            writer.add_image(f"val_rollout/{task}", strip, self.calls, dataformats="HWC")

    def restore_best(self, vla: Any) -> dict[str, Any]:
        """Load the weights of the best validation evaluation; returns what was chosen."""
        if self.best is None:
            return {}
        score, call, state = self.best
        vla.load_state_dict(state)
        return {"val_success": score, "val_evaluation": call, "val_history": self.history}


def train_vla(cfg: VLARunConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the summary also written to out_dir/summary.json."""
    import fmmm.envs
    from fmmm.eval.rollout import evaluate
    from fmmm.policies.lora import count_parameters
    from fmmm.train.trainer import Trainer

    run = Run(cfg)
    timings: dict[str, float] = {}
    dataset = run.main_first(lambda: find_or_collect(cfg))
    frames = run.main_first(lambda: DemoFrames(dataset, cfg.policy.cameras, cfg.task, run.is_main))
    timings["data_seconds"] = run.elapsed()

    vla, origin = build_vla(cfg, dataset, frames)
    if cfg.policy.normalize_patches and "patch_statistics" not in origin:
        vla.patch_normalizer = fit_patch_normalizer(frames, vla)
    adapt(vla, cfg.adaptation)
    trainable, total = count_parameters(vla)
    samples = FrameSamples(frames, vla)
    stream = task_stream(cfg, frames, samples)
    timings["prepare_seconds"] = run.elapsed() - timings["data_seconds"]
    validator = Validator(cfg, run.out_dir) if cfg.eval.val_episodes else None
    trainer = Trainer(
        cfg.train,
        vla,
        stream,
        run.out_dir,
        accelerator=run.accelerator,
        count_tokens=lambda batch: int((batch.sample_ids > 0).sum()),
        evaluate=validator,
    )
    if validator is not None:
        validator.step = lambda: trainer.step
    mark = time.perf_counter()
    result = trainer.train()
    timings["train_seconds"] = time.perf_counter() - mark
    vla = trainer.accelerator.unwrap_model(trainer.module)
    vla.eval()
    completed = result.status == "completed"  # a preempted run resumes later: no policy yet
    chosen = validator.restore_best(vla) if validator is not None and completed else {}
    evaluation = None
    if run.is_main and completed:
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
            "head": cfg.policy.head,
            "adaptation": cfg.adaptation.mode,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_fraction": trainable / total,
            **origin,
            "validation": chosen or None,
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
