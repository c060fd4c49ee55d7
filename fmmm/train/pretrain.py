"""Multimodal pretraining: `python -m fmmm.train configs/pretrain/tiny.yaml` (kind: pretrain).

The data mixture (built-in corpus or user shards) becomes, per batch, one packed sequence batch
for next-token prediction (text; captions after an image, video or audio prefix) plus, per
contrastive modality, a batch of media alone and a batch of their captions alone for the pooled
embeddings. `PretrainModule` adds the weighted objectives; `Trainer` does the rest. Held-out
evaluation reports each loss and image/video/audio -> text retrieval recall@1 against chance.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fmmm.corpus.build import CorpusConfig
from fmmm.models.multimodal import MultimodalConfig
from fmmm.train.samples import KINDS, MEDIA, PretrainBatch, SampleDecoder
from fmmm.train.trainer import TrainerConfig


@dataclass
class SourceConfig:
    """One data source of the mixture; `path` empty means the built-in corpus's `kind` shards.

    `robot` sources read a dataset folder written by `python -m fmmm.collect`.
    """

    kind: str = "text"
    weight: float = 1.0
    path: str = ""  # folder, glob or shard file (webdataset tar / JSONL), or a robot dataset
    heldout_path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"data source kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "robot" and not self.path:
            raise ValueError("a robot data source needs path: a dataset folder (fmmm.collect)")
        if self.weight < 0:
            raise ValueError(f"data source {self.kind}: weight must be >= 0, got {self.weight}")


@dataclass
class DataConfig:
    """The mixture, the built-in corpus settings and how samples become sequences."""

    sources: list[SourceConfig] = field(
        default_factory=lambda: [SourceConfig(kind=k) for k in KINDS if k in MEDIA or k == "text"]
    )
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    cache_dir: str = ""  # "" -> $FMMM_CACHE/corpus or ~/.cache/fmmm/corpus
    context_length: int = 128
    audio_mels: int = 64
    audio_frames_per_patch: int = 4
    heldout_batch: int = 64  # held-out samples per source for the held-out losses
    action_chunk: int = 1  # robot sources: actions predicted per frame
    robot_camera: str = ""  # robot sources: camera name ("" = the dataset's first)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("data.sources must list at least one source")
        if self.context_length < 8:
            raise ValueError(f"data.context_length must be >= 8, got {self.context_length}")
        if self.action_chunk < 1:
            raise ValueError(f"data.action_chunk must be >= 1, got {self.action_chunk}")


@dataclass
class ObjectivesConfig:
    """Weights of the objectives (0 disables one) and their options."""

    autoregressive: float = 1.0
    contrastive: float = 1.0
    contrastive_kind: str = "infonce"  # infonce | siglip
    contrastive_modalities: list[str] = field(default_factory=lambda: ["image", "video", "audio"])
    masked: float = 0.0  # masked image-patch prediction
    mask_ratio: float = 0.5

    def __post_init__(self) -> None:
        for name in ("autoregressive", "contrastive", "masked"):
            if getattr(self, name) < 0:
                raise ValueError(f"objectives.{name} must be >= 0, got {getattr(self, name)}")
        if self.contrastive_kind not in ("infonce", "siglip"):
            raise ValueError(
                f"objectives.contrastive_kind must be infonce or siglip, got {self.contrastive_kind!r}"
            )
        for modality in self.contrastive_modalities:
            if modality not in MEDIA.values():
                raise ValueError(f"objectives.contrastive_modalities: unknown {modality!r}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"objectives.mask_ratio must be in (0, 1), got {self.mask_ratio}")


@dataclass
class PretrainConfig:
    """A pretraining run: model, data mixture, objectives and the trainer settings."""

    RENAMED: ClassVar[dict[str, str]] = {"run_dir": "out_dir"}
    kind: str = "pretrain"
    out_dir: str = "runs/pretrain"
    model: MultimodalConfig = field(default_factory=MultimodalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    train: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.kind != "pretrain":
            raise ValueError(f"kind must be 'pretrain' for this runner, got {self.kind!r}")
        if self.data.context_length > self.model.backbone.max_seq_len:
            raise ValueError(
                f"data.context_length {self.data.context_length} is longer than the model's "
                f"context model.backbone.max_seq_len {self.model.backbone.max_seq_len}"
            )


class PretrainModule(nn.Module):
    """The backbone plus every objective; `forward(batch)` returns the weighted loss and each part."""

    def __init__(self, model: nn.Module, cfg: ObjectivesConfig):
        from fmmm.objectives.autoregressive import NextTokenLoss
        from fmmm.objectives.contrastive import ContrastiveLoss
        from fmmm.objectives.masked import MaskedPatchLoss

        super().__init__()
        self.model = model
        self.cfg = cfg
        self.next_token = NextTokenLoss(action_offset=model.action_offset)
        modalities = cfg.contrastive_modalities if cfg.contrastive else []
        self.contrastive = nn.ModuleDict(
            {m: ContrastiveLoss(cfg.contrastive_kind) for m in modalities}
        )
        patch_features = 3 * model.config.patch_size**2 if cfg.masked else 0
        self.masked = (
            MaskedPatchLoss(model.config.backbone.dim, patch_features) if cfg.masked else None
        )

    def _pooled(self, batch: PretrainBatch, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        if modality in batch.pairs:
            media, text = batch.pairs[modality]
            return self.model.embed_pooled(media, modality), self.model.embed_pooled(text, "text")
        # this process drew no such pair; the gather still needs a (0, E) tensor in the graph
        anchor = self.model.pooled_heads[modality].proj.weight
        empty = anchor.new_zeros(0, anchor.shape[0]) + 0 * anchor.sum()
        return empty, empty

    def _masked_loss(self, batch: PretrainBatch) -> torch.Tensor | None:
        from fmmm.objectives.masked import mask_patches
        from fmmm.tokenizers.sequence import Modality

        if "image" not in batch.pairs:
            return None
        media, _ = batch.pairs["image"]
        masked_batch, masked_rows, original = mask_patches(media, "image", self.cfg.mask_ratio)
        hidden = self.model(masked_batch)["hidden"]  # (B, L, D)
        image_hidden = hidden[masked_batch.modality == int(Modality.IMAGE)]  # (N_image, D)
        return self.masked(image_hidden[masked_rows], original[masked_rows])["loss"]

    def forward(self, batch: PretrainBatch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        out = self.model(batch.lm)
        logged: dict[str, torch.Tensor] = {}
        total = out["aux_loss"]
        if cfg.autoregressive:
            ar = self.next_token(out["logits"], batch.lm.targets)
            total = total + cfg.autoregressive * ar["loss"]
            logged["ar_loss"] = ar["loss"].detach()
            for key in ("text_loss", "action_loss"):
                if key in ar:
                    logged[f"ar_{key}"] = ar[key]
        for modality, objective in self.contrastive.items():
            emb_media, emb_text = self._pooled(batch, modality)
            result = objective(emb_media, emb_text)
            if result is None:
                continue
            total = total + cfg.contrastive * result["loss"]
            logged[f"contrastive_{modality}_loss"] = result["loss"].detach()
            logged[f"contrastive_{modality}_scale"] = result["logit_scale"]
        if self.masked is not None:
            masked = self._masked_loss(batch)
            if masked is not None:
                total = total + cfg.masked * masked
                logged["masked_loss"] = masked.detach()
        return {"loss": total, **logged}


def build_tokenizers(
    cfg: PretrainConfig, train_sets: list[tuple[SourceConfig, Any]], saved: Path
) -> dict[str, Any]:
    """Tokenizers of a run: loaded from `saved` when a resumed run wrote them, else built.

    The text BPE is trained on the training texts; robot sources fit the action tokenizer and
    state normalizer on their first episodes.
    """
    from fmmm.tokenizers.action import ActionTokenizer, StateNormalizer
    from fmmm.tokenizers.audio import AudioTokenizer
    from fmmm.tokenizers.image import ImageTokenizer, VideoTokenizer
    from fmmm.tokenizers.text import TEXT_META_FILE, TextTokenizer

    model = cfg.model
    tokenizers: dict[str, Any] = {
        "image": ImageTokenizer(model.image_size, model.patch_size),
        "video": VideoTokenizer(model.image_size, model.patch_size, model.video_tubelet),
        "audio": AudioTokenizer(
            sample_rate=cfg.data.corpus.sample_rate,
            n_mels=cfg.data.audio_mels,
            frames_per_patch=cfg.data.audio_frames_per_patch,
        ),
    }
    if tokenizers["audio"].patch_dim != model.audio_features:
        raise ValueError(
            f"model.audio_features {model.audio_features} must equal data.audio_mels x "
            f"data.audio_frames_per_patch = {tokenizers['audio'].patch_dim}"
        )
    if (saved / "text" / TEXT_META_FILE).is_file():
        tokenizers["text"] = TextTokenizer.load(saved / "text")
    else:
        texts = [ds[i]["text"] for _, ds in train_sets for i in range(min(len(ds), 2000))]
        tokenizers["text"] = TextTokenizer.train(texts, vocab_size=model.text_vocab_size)
    robots = [ds for source, ds in train_sets if source.kind == "robot"]
    if robots:
        if model.action_bins < 2:
            raise ValueError(
                f"model.action_bins must be >= 2 for robot sources, got {model.action_bins}"
            )
        if (saved / "action").is_dir():
            tokenizers["action"] = ActionTokenizer.load(saved / "action")
            tokenizers["state"] = StateNormalizer.load(saved / "state")
        else:
            actions, states = (
                np.concatenate(parts) for parts in zip(*(r.fit_arrays() for r in robots))
            )
            tokenizers["action"] = ActionTokenizer(num_bins=model.action_bins).fit(actions)
            tokenizers["state"] = StateNormalizer().fit(states)
    return tokenizers


def open_sources(
    cfg: PretrainConfig, accelerator: Any
) -> tuple[list[tuple[SourceConfig, Any]], dict[str, Any]]:
    """(source, training set) pairs and held-out sets by kind; builds the corpus once if needed."""
    from fmmm.corpus.build import build_corpus
    from fmmm.data.shards import ShardDataset
    from fmmm.train.samples import RobotFrames

    corpus_root = None
    if any(not source.path for source in cfg.data.sources):
        if accelerator.is_main_process:
            build_corpus(cfg.data.corpus, cfg.data.cache_dir or None)
        accelerator.wait_for_everyone()
        corpus_root = build_corpus(cfg.data.corpus, cfg.data.cache_dir or None)  # cached now

    def open_one(kind: str, path: str) -> Any:
        if kind == "robot":
            return RobotFrames(path, cfg.data.action_chunk, cfg.data.robot_camera)
        return ShardDataset(path)

    train_sets, heldout_sets = [], {}
    for source in cfg.data.sources:
        path = source.path or str(corpus_root / source.kind / "train")
        train_sets.append((source, open_one(source.kind, path)))
        heldout = source.heldout_path
        if not heldout and not source.path:
            heldout = str(corpus_root / source.kind / "heldout")
        if heldout:
            heldout_sets[source.kind] = open_one(source.kind, heldout)
    return train_sets, heldout_sets


class HeldoutEvaluator:
    """Held-out losses per source and media -> text retrieval recall@1 (with chance level)."""

    def __init__(
        self,
        decoder: SampleDecoder,
        heldout: dict[str, Any],
        batch_size: int,
        modalities: list[str],
    ):
        self.decoder = decoder
        self.modalities = modalities
        self.loss_batches = {}
        self.retrieval = {}
        for kind, dataset in heldout.items():
            samples = [dataset[i] for i in range(min(batch_size, len(dataset)))]
            self.loss_batches[kind] = decoder(samples, [kind] * len(samples), modalities)
            if kind in MEDIA:
                every = [dataset[i] for i in range(len(dataset))]
                media = [decoder.media_alone(s, kind) for s in every]
                texts = [decoder.caption_alone(s["text"]) for s in every]
                self.retrieval[MEDIA[kind]] = (media, texts)

    def _embed(self, model: nn.Module, rows: list, modality: str, chunk: int = 64) -> torch.Tensor:
        device = next(model.parameters()).device
        parts = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            batch = self.decoder.builder.build(
                part, self.decoder.fit_length(part), pack=False, truncate=True
            )
            parts.append(model.embed_pooled(batch.to(device), modality).float())
        return torch.cat(parts)

    def __call__(self, module: PretrainModule) -> dict[str, float]:
        metrics: dict[str, float] = {}
        device = next(module.parameters()).device
        for kind, batch in self.loss_batches.items():
            out = module(batch.to(device))
            metrics[f"{kind}/loss"] = float(out["loss"])
            if "ar_loss" in out:
                metrics[f"{kind}/ar_loss"] = float(out["ar_loss"])
        ar = [metrics[f"{k}/ar_loss"] for k in self.loss_batches if f"{k}/ar_loss" in metrics]
        if ar:
            metrics["heldout_ar_loss"] = float(np.mean(ar))
        for modality, (media, texts) in self.retrieval.items():
            emb_media = self._embed(module.model, media, modality)
            emb_text = self._embed(module.model, texts, "text")
            hits = (emb_media @ emb_text.T).argmax(dim=1) == torch.arange(len(media), device=device)
            metrics[f"{modality}_to_text_recall@1"] = float(hits.float().mean())
            metrics[f"{modality}_to_text_chance"] = 1.0 / len(media)
        return metrics


def run(config_path: str, overrides: list[str]) -> Any:
    """Pretrain the multimodal backbone described by a `PretrainConfig` YAML."""
    from fmmm.config import load_config
    from fmmm.models.factory import builder_tokenizers, create_model_and_builder
    from fmmm.scaling import shape_of
    from fmmm.train.data import MixtureStream
    from fmmm.train.parallel import sequence_buckets
    from fmmm.train.recipe import Run
    from fmmm.train.trainer import Trainer

    cfg = load_config(PretrainConfig, config_path, overrides)
    run = Run(cfg)
    train_sets, heldout_sets = open_sources(cfg, run.accelerator)
    tokenizer_dir = run.out_dir / "tokenizers"  # a resumed run keeps its vocabulary and bins
    tokenizers = build_tokenizers(cfg, train_sets, tokenizer_dir)
    run.seed()
    model, builder = create_model_and_builder(cfg.model, tokenizers)  # checks they fit the model
    if run.is_main:
        for name, tokenizer in tokenizers.items():
            tokenizer.save(tokenizer_dir / name)
    run.accelerator.wait_for_everyone()
    buckets = sequence_buckets(cfg.train, cfg.data.context_length)  # compile: a few fixed shapes
    decoder = SampleDecoder(builder, cfg.data.context_length, length_buckets=buckets)
    modalities = list(cfg.objectives.contrastive_modalities) if cfg.objectives.contrastive else []
    if cfg.objectives.masked:
        modalities = sorted(set(modalities) | {"image"})
    stream = MixtureStream(
        [(s.kind, ds, s.weight) for s, ds in train_sets],
        lambda samples, kinds: decoder(samples, kinds, modalities),
        seed=cfg.train.seed,
    )
    module = PretrainModule(model, cfg.objectives)
    evaluator = HeldoutEvaluator(decoder, heldout_sets, cfg.data.heldout_batch, modalities)
    shape = shape_of(cfg.model.backbone, cfg.model.vocab_size, seq_len=cfg.data.context_length)
    trainer = Trainer(
        cfg.train,
        module,
        stream,
        run.out_dir,
        accelerator=run.accelerator,
        count_tokens=lambda batch: batch.tokens,
        evaluate=evaluator,
        flops_per_token=shape.flops_per_token(),
    )
    result = trainer.train()
    if run.is_main:
        model = run.accelerator.unwrap_model(trainer.module).model
        model.save_pretrained(run.out_dir / "model", tokenizers=builder_tokenizers(builder))
    summary = run.finish(result, {**asdict(result), "parameters": shape.parameters(active=True)})
    if run.is_main:
        print(
            json.dumps(
                {k: summary.summary[k] for k in ("status", "step", "tokens_per_second", "mfu")}
            )
        )
        print(json.dumps(result.eval_metrics, sort_keys=True))
    return result
