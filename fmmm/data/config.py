"""Typed configs of the curation commands (`python -m fmmm.data CMD ... [key=value ...]`).

Every threshold lives here; `fmmm.config.load_config(Schema, yaml_path, overrides)` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class RunConfig:
    """Fields shared by every command."""

    workers: int = 1  # worker processes, one shard at a time each (executor=local)
    progress: bool = True  # tqdm progress bar on stderr
    executor: str = "local"  # local (worker processes) | ray (Ray tasks; pip install -e '.[ray]')
    ray_address: str = ""  # executor=ray: an existing cluster (ray.init address); empty: start one

    def __post_init__(self) -> None:
        _check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        _check(
            self.executor in ("local", "ray"),
            f"executor must be local or ray, got {self.executor!r}",
        )


# How a command runs, not what it computes: left out of work-folder fingerprints and reports, so
# a run resumes under another engine and every engine writes the same report.
RUN_FIELDS = ("workers", "progress", "executor", "ray_address")


def computed_settings(config: RunConfig) -> dict:
    """The config as a dict without the run fields: what decides a command's output."""
    from fmmm.config import config_to_dict

    return {k: v for k, v in config_to_dict(config).items() if k not in RUN_FIELDS}


@dataclass
class StatsConfig(RunConfig):
    tokenizer: str = ""  # fmmm TextTokenizer folder; empty: count whitespace words as tokens


@dataclass
class DedupConfig(RunConfig):
    exact: bool = True  # hash of normalised content, every modality
    text: bool = True  # MinHash-LSH near duplicates of text documents
    ngram: int = 5  # word n-gram shingles
    num_perm: int = 128
    threshold: float = 0.8  # Jaccard similarity that makes a near duplicate
    bands: int = 0  # bands x rows; 0 and 0: chosen from threshold and the weights below
    rows: int = 0
    # Weights of false positive / negative S-curve areas when choosing bands x rows; candidates
    # are verified by default, so a missed duplicate costs more than a spurious candidate.
    fp_weight: float = 0.1
    fn_weight: float = 0.9
    verify: str = "minhash"  # none | minhash (estimated Jaccard) | jaccard (exact, re-reads)
    seed: int = 1  # MinHash permutations
    max_bucket_neighbours: int = 16  # earlier bucket members each item is compared with
    images: bool = True  # perceptual-hash near duplicates of images and video frames
    hamming: int = 4  # max differing pHash bits
    video_frames: int = 4  # frames sampled evenly from a video, each hashed
    clip_model: str = ""  # open_clip model name: adds embedding cosine dedup of images
    clip_pretrained: str = ""  # its local weights file
    cosine: float = 0.95
    ann_probes: int = 16  # inverted-file cells searched per image embedding (recall vs time)
    # Hash partitions of the bucket stages: each task holds about 1/partitions of the LSH band,
    # pHash chunk and content keys (docs/data.md sizes them); the output does not depend on it.
    partitions: int = 16
    episode_points: int = 32  # robot trajectories are resampled to this many steps
    episode_decimals: int = 2  # and rounded to this many decimals before hashing

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.ngram >= 1, f"ngram must be >= 1, got {self.ngram}")
        _check(self.num_perm >= 1, f"num_perm must be >= 1, got {self.num_perm}")
        _check(0.0 < self.threshold < 1.0, f"threshold must be in (0, 1), got {self.threshold}")
        _check(
            (self.bands == 0) == (self.rows == 0),
            f"set both bands and rows or neither (got bands={self.bands}, rows={self.rows})",
        )
        _check(
            self.bands >= 0 and self.rows >= 0 and self.bands * self.rows <= self.num_perm,
            f"bands x rows = {self.bands * self.rows} must be <= num_perm = {self.num_perm}",
        )
        _check(
            self.verify in ("none", "minhash", "jaccard"),
            f"verify must be none, minhash or jaccard, got {self.verify!r}",
        )
        _check(0 <= self.hamming < 64, f"hamming must be in [0, 64), got {self.hamming}")
        _check(self.video_frames >= 1, f"video_frames must be >= 1, got {self.video_frames}")
        _check(-1.0 <= self.cosine <= 1.0, f"cosine must be in [-1, 1], got {self.cosine}")
        _check(self.partitions >= 1, f"partitions must be >= 1, got {self.partitions}")
        _check(self.ann_probes >= 1, f"ann_probes must be >= 1, got {self.ann_probes}")
        _check(self.episode_points >= 2, f"episode_points must be >= 2, got {self.episode_points}")
        _check(
            self.max_bucket_neighbours >= 1,
            f"max_bucket_neighbours must be >= 1, got {self.max_bucket_neighbours}",
        )


@dataclass
class DecontaminateConfig(RunConfig):
    # .jsonl files (text), image folders, robot dataset folders, or sim:TASK:EPISODES[:SEED] for the
    # simulation suite's own evaluation episodes (instructions and initial states).
    eval_sets: list[str] = field(default_factory=list)
    ngram: int = 13  # GPT-3 / lm-eval rule: one shared 13-gram contaminates
    rule: str = (
        "any"  # any | fraction (PaLM: >= `fraction` of an eval item's n-grams, e.g. 8-grams)
    )
    fraction: float = 0.7
    hamming: int = 4  # images within this pHash distance of an eval image are contaminated
    state_tolerance: float = 1e-4  # episodes: same instruction and initial state within this
    mode: str = "remove"  # remove | report

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(len(self.eval_sets) > 0, "eval_sets is empty: give at least one evaluation set")
        _check(self.ngram >= 1, f"ngram must be >= 1, got {self.ngram}")
        _check(self.rule in ("any", "fraction"), f"rule must be any or fraction, got {self.rule!r}")
        _check(0.0 < self.fraction <= 1.0, f"fraction must be in (0, 1], got {self.fraction}")
        _check(
            self.mode in ("remove", "report"), f"mode must be remove or report, got {self.mode!r}"
        )
        _check(0 <= self.hamming < 64, f"hamming must be in [0, 64), got {self.hamming}")


@dataclass
class FilterConfig(RunConfig):
    # Gopher quality rules (Rae et al. 2021) for text documents.
    gopher: bool = True
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_ratio: float = 0.1  # '#' and '...' per word
    max_bullet_lines: float = 0.9  # fraction of lines starting with a bullet
    max_ellipsis_lines: float = 0.3  # fraction of lines ending with an ellipsis
    min_alpha_words: float = 0.8  # fraction of words with an alphabetic character
    min_stop_words: int = 2
    max_duplicate_lines: float = 0.3  # fraction of lines that repeat an earlier line
    max_duplicate_line_chars: float = 0.2
    max_duplicate_paragraphs: float = 0.3
    max_duplicate_paragraph_chars: float = 0.2
    max_top_ngram_chars: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])  # n=2,3,4
    max_duplicate_ngram_chars: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]  # n=5..10
    )
    # C4 rules (Raffel et al. 2020): drop lines, then whole documents.
    c4: bool = True
    c4_min_line_words: int = 3
    c4_terminal_punctuation: bool = True
    c4_min_sentences: int = 3
    c4_bad_substrings: list[str] = field(default_factory=lambda: ["lorem ipsum", "{"])  # drop doc
    c4_bad_line_substrings: list[str] = field(
        default_factory=lambda: [
            "javascript",
            "terms of use",
            "privacy policy",
            "cookie policy",
            "uses cookies",
            "use of cookies",
            "use cookies",
        ]
    )
    # Blocklist: a file with one word or phrase per line.
    blocklist: str = ""
    max_blocklist_hits: int = 0  # more hits than this removes the item
    # Image-text pairs.
    min_caption_words: int = 1
    max_caption_words: int = 128
    min_image_side: int = 16
    max_aspect_ratio: float = 4.0
    clip_model: str = ""  # open_clip model name: enables CLIP-score filtering
    clip_pretrained: str = ""  # its local weights file
    min_clip_score: float = 0.2  # cosine similarity of image and caption embeddings

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.min_words <= self.max_words, "min_words must be <= max_words")
        _check(
            self.min_mean_word_length <= self.max_mean_word_length,
            "min_mean_word_length must be <= max_mean_word_length",
        )
        _check(len(self.max_top_ngram_chars) == 3, "max_top_ngram_chars needs 3 values (n=2,3,4)")
        _check(
            len(self.max_duplicate_ngram_chars) == 6,
            "max_duplicate_ngram_chars needs 6 values (n=5..10)",
        )
        _check(self.min_caption_words <= self.max_caption_words, "min_caption_words > max")
        _check(self.max_aspect_ratio >= 1.0, "max_aspect_ratio must be >= 1")
        _check(self.max_blocklist_hits >= 0, "max_blocklist_hits must be >= 0")


@dataclass
class MixConfig(RunConfig):
    weights: dict[str, float] = field(default_factory=dict)  # source -> target proportion
    total: int = 0  # items to write; 0: as many as possible without repeating any item
    allow_repeat: bool = False  # upsample small sources by repeating items
    seed: int = 0
    samples_per_shard: int = 1000
    format: str = "auto"  # tar | jsonl | auto (jsonl when every item is text)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(len(self.weights) > 0, "weights is empty: give source=proportion entries")
        _check(all(w >= 0 for w in self.weights.values()), "weights must be >= 0")
        _check(sum(self.weights.values()) > 0, "weights must not all be 0")
        _check(self.total >= 0, f"total must be >= 0, got {self.total}")
        _check(self.samples_per_shard >= 1, "samples_per_shard must be >= 1")
        _check(self.format in ("tar", "jsonl", "auto"), "format must be tar, jsonl or auto")
