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
from typing import Any

import numpy as np
import torch
from torch import nn

from fmmm.corpus.build import CorpusConfig
from fmmm.models.multimodal import MultimodalConfig
from fmmm.train.runners import RUNNERS
from fmmm.train.trainer import TrainerConfig

KINDS = ("image_text", "video_text", "audio_text", "text")
MEDIA = {"image_text": "image", "video_text": "video", "audio_text": "audio"}


@dataclass
class SourceConfig:
    """One data source of the mixture; `path` empty means the built-in corpus's `kind` shards."""

    kind: str = "text"
    weight: float = 1.0
    path: str = ""  # folder, glob or shard file (webdataset tar / JSONL)
    heldout_path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"data source kind must be one of {KINDS}, got {self.kind!r}")
        if self.weight < 0:
            raise ValueError(f"data source {self.kind}: weight must be >= 0, got {self.weight}")


@dataclass
class DataConfig:
    """The mixture, the built-in corpus settings and how samples become sequences."""

    sources: list[SourceConfig] = field(
        default_factory=lambda: [SourceConfig(kind=k) for k in KINDS]
    )
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    cache_dir: str = ""  # "" -> $FMMM_CACHE/corpus or ~/.cache/fmmm/corpus
    context_length: int = 128
    audio_mels: int = 64
    audio_frames_per_patch: int = 4
    heldout_batch: int = 64  # held-out samples per source for the held-out losses

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("data.sources must list at least one source")
        if self.context_length < 8:
            raise ValueError(f"data.context_length must be >= 8, got {self.context_length}")


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

    kind: str = "pretrain"
    run_dir: str = "runs/pretrain"
    model: MultimodalConfig = field(default_factory=MultimodalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    train: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.kind != "pretrain":
            raise ValueError(f"kind must be 'pretrain' for this runner, got {self.kind!r}")


@dataclass
class PretrainBatch:
    """Sequences for the next-token loss and, per modality, (media alone, captions alone)."""

    lm: Any  # MultimodalBatch
    pairs: dict[str, tuple[Any, Any]]
    tokens: int  # non-padding positions over all of the above

    def to(self, device: Any, non_blocking: bool = False) -> PretrainBatch:
        pairs = {m: (media.to(device), text.to(device)) for m, (media, text) in self.pairs.items()}
        return PretrainBatch(self.lm.to(device), pairs, self.tokens)


class SampleDecoder:
    """Turns shard samples into segment lists with the sequence builder.

    A sample's media segments are computed once and kept (up to `cache_size` samples): epochs
    over a corpus then cost no decoding or spectrograms, and results are identical either way.
    """

    def __init__(self, builder: Any, context_length: int, cache_size: int = 50_000):
        self.builder = builder
        self.context_length = context_length
        self.cache_size = cache_size
        self._cache: dict[tuple[str, str], list] = {}

    def media(self, sample: dict, kind: str) -> dict[str, Any]:
        """Decoded payload as the sequence builder takes it."""
        from fmmm.corpus.audio import read_wav
        from fmmm.data.shards import decode_audio, decode_image, decode_video

        if kind == "image_text":
            return {"image": torch.from_numpy(decode_image(sample).copy()).permute(2, 0, 1)}
        if kind == "video_text":
            return {"video": torch.from_numpy(decode_video(sample).copy()).permute(0, 3, 1, 2)}
        if sample["ext"].get("audio") == "wav":
            wave, rate = read_wav(sample["audio"])
        else:
            wave, rate = decode_audio(sample)
            wave = wave.mean(axis=0)
        return {"audio": torch.from_numpy(wave), "sample_rate": rate}

    def media_segments(self, sample: dict, kind: str) -> list:
        """Marker + patches of the sample's image, video or audio (cached)."""
        key = (sample["source"], sample["key"])
        if key not in self._cache:
            media = self.media(sample, kind)
            if kind == "image_text":
                segments = self.builder.image(media["image"])
            elif kind == "video_text":
                segments = self.builder.video(media["video"])
            else:
                segments = self.builder.audio(media["audio"], media["sample_rate"])
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = segments
        return self._cache[key]

    def _bos(self) -> list:
        from fmmm.tokenizers.sequence import Modality, Segment

        return [Segment(Modality.TEXT, ids=[self.builder.text_tokenizer.bos_id], prefix=True)]

    def media_alone(self, sample: dict, kind: str) -> list:
        """BOS + media as a bidirectional prefix: the input of the pooled media embedding."""
        return self._bos() + self.media_segments(sample, kind)

    def caption_alone(self, caption: str) -> list:
        """BOS caption EOS without loss: the input of the pooled text embedding."""
        return self.builder.text(caption, bos=True, eos=True, loss=False)

    def lm_sample(self, sample: dict, kind: str) -> list:
        """Text, or the caption after its media prefix (`SequenceBuilder.caption_sample`)."""
        if kind == "text":
            return self.builder.text_sample(sample["text"])
        return self.media_alone(sample, kind) + self.builder.text(sample["text"], eos=True)

    def _fit(self, rows: list[list]) -> int:
        """Row length for one-sample-per-row batches: the longest row, capped by the context."""
        return min(self.context_length, max(sum(len(s) for s in row) for row in rows))

    def __call__(
        self, samples: list[dict], kinds: list[str], modalities: list[str]
    ) -> PretrainBatch:
        lm_samples, pair_samples = [], {m: ([], []) for m in modalities}
        for sample, kind in zip(samples, kinds):
            if not sample.get("text"):
                raise ValueError(f"{sample['source']}:{sample['position']}: sample has no text")
            lm_samples.append(self.lm_sample(sample, kind))
            if kind in MEDIA and MEDIA[kind] in pair_samples:
                pair_samples[MEDIA[kind]][0].append(self.media_alone(sample, kind))
                pair_samples[MEDIA[kind]][1].append(self.caption_alone(sample["text"]))
        build = self.builder.build
        lm = build(lm_samples, self.context_length, pack=True, truncate=True)
        tokens = int((lm.sample_ids > 0).sum())
        pairs = {}
        for modality, (media_rows, text_rows) in pair_samples.items():
            if media_rows:
                media = build(media_rows, self._fit(media_rows), pack=False, truncate=True)
                text = build(text_rows, self._fit(text_rows), pack=False, truncate=True)
                pairs[modality] = (media, text)
                tokens += int((media.sample_ids > 0).sum() + (text.sample_ids > 0).sum())
        return PretrainBatch(lm, pairs, tokens)


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
        patch_features = model.encoders["image"].proj.in_features if cfg.masked else 0
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


def build_tokenizers(cfg: PretrainConfig, texts: list[str]) -> dict[str, Any]:
    """Text BPE trained on the training texts, plus image, video and audio tokenizers."""
    from fmmm.tokenizers.audio import AudioTokenizer
    from fmmm.tokenizers.image import ImageTokenizer, VideoTokenizer
    from fmmm.tokenizers.text import TextTokenizer

    model = cfg.model
    audio = AudioTokenizer(
        sample_rate=cfg.data.corpus.sample_rate,
        n_mels=cfg.data.audio_mels,
        frames_per_patch=cfg.data.audio_frames_per_patch,
    )
    if audio.patch_dim != model.audio_features:
        raise ValueError(
            f"model.audio_features {model.audio_features} must equal data.audio_mels x "
            f"data.audio_frames_per_patch = {audio.patch_dim}"
        )
    return {
        "text": TextTokenizer.train(texts, vocab_size=model.text_vocab_size),
        "image": ImageTokenizer(model.image_size, model.patch_size),
        "video": VideoTokenizer(model.image_size, model.patch_size, model.video_tubelet),
        "audio": audio,
    }


def _source_paths(cfg: PretrainConfig, accelerator: Any) -> list[tuple[SourceConfig, str, str]]:
    """(source, train path, held-out path); builds the built-in corpus once if a source needs it."""
    from fmmm.corpus.build import build_corpus

    corpus_root = None
    if any(not source.path for source in cfg.data.sources):
        if accelerator.is_main_process:
            corpus_root = build_corpus(cfg.data.corpus, cfg.data.cache_dir or None)
        accelerator.wait_for_everyone()
        corpus_root = build_corpus(cfg.data.corpus, cfg.data.cache_dir or None)  # cached now
    paths = []
    for source in cfg.data.sources:
        train = source.path or str(corpus_root / source.kind / "train")
        heldout = source.heldout_path or (
            "" if source.path else str(corpus_root / source.kind / "heldout")
        )
        paths.append((source, train, heldout))
    return paths


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
                part, self.decoder._fit(part), pack=False, truncate=True
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


@RUNNERS.register("pretrain")
def run(config_path: str, overrides: list[str]) -> Any:
    """Pretrain the multimodal backbone described by a `PretrainConfig` YAML."""
    from fmmm.config import load_config, save_config
    from fmmm.models.multimodal import MultimodalModel
    from fmmm.scaling import shape_of
    from fmmm.tokenizers.sequence import SequenceBuilder
    from fmmm.train.data import MixtureStream, ShardDataset
    from fmmm.train.trainer import Trainer, make_accelerator
    from fmmm.utils.seed import seed_everything

    cfg = load_config(PretrainConfig, config_path, overrides)
    run_dir = Path(cfg.run_dir)
    accelerator = make_accelerator(cfg.train, run_dir)
    sources = _source_paths(cfg, accelerator)
    train_sets = [(s, ShardDataset(train)) for s, train, _ in sources]
    heldout_sets = {s.kind: ShardDataset(held) for s, _, held in sources if held}

    tokenizer_dir = run_dir / "tokenizers"
    if (tokenizer_dir / "text_tokenizer.json").is_file():  # a resumed run keeps its vocabulary
        from fmmm.tokenizers.text import TextTokenizer

        tokenizers = build_tokenizers(cfg, ["resumed"])
        tokenizers["text"] = TextTokenizer.load(tokenizer_dir)
    else:
        texts = [ds[i]["text"] for _, ds in train_sets for i in range(min(len(ds), 2000))]
        tokenizers = build_tokenizers(cfg, texts)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        for tokenizer in tokenizers.values():
            tokenizer.save(tokenizer_dir)
    accelerator.wait_for_everyone()
    if tokenizers["text"].vocab_size > cfg.model.text_vocab_size:
        raise ValueError(
            f"text tokenizer has {tokenizers['text'].vocab_size} ids > model.text_vocab_size"
        )
    builder = SequenceBuilder(
        tokenizers["text"],
        image_tokenizer=tokenizers["image"],
        video_tokenizer=tokenizers["video"],
        audio_tokenizer=tokenizers["audio"],
        action_offset=cfg.model.text_vocab_size,
    )
    decoder = SampleDecoder(builder, cfg.data.context_length)
    modalities = list(cfg.objectives.contrastive_modalities) if cfg.objectives.contrastive else []
    if cfg.objectives.masked:
        modalities = sorted(set(modalities) | {"image"})
    stream = MixtureStream(
        [(s.kind, ds, s.weight) for s, ds in train_sets],
        lambda samples, kinds: decoder(samples, kinds, modalities),
        seed=cfg.train.seed,
    )
    seed_everything(cfg.train.seed)
    model = MultimodalModel(cfg.model)
    module = PretrainModule(model, cfg.objectives)
    evaluator = HeldoutEvaluator(decoder, heldout_sets, cfg.data.heldout_batch, modalities)
    shape = shape_of(cfg.model.backbone, cfg.model.vocab_size, seq_len=cfg.data.context_length)
    trainer = Trainer(
        cfg.train,
        module,
        stream,
        run_dir,
        accelerator=accelerator,
        count_tokens=lambda batch: batch.tokens,
        evaluate=evaluator,
        flops_per_token=shape.flops_per_token(),
    )
    result = trainer.train()
    if accelerator.is_main_process:
        accelerator.unwrap_model(trainer.module).model.save_pretrained(run_dir / "model")
        for tokenizer in tokenizers.values():
            tokenizer.save(run_dir / "model")  # tokenizers live next to the weights
        summary = {**asdict(result), "parameters": shape.parameters(active=True)}
        from fmmm.utils.io import atomic_write_json

        atomic_write_json(run_dir / "summary.json", summary)
        print(json.dumps({k: summary[k] for k in ("status", "step", "tokens_per_second", "mfu")}))
        print(json.dumps(result.eval_metrics, sort_keys=True))
    return result
