"""Synthetic corpora with planted duplicates, contamination and low-quality items."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fmmm.data.shards import encode_image, make_sample, write_shard

STOP = ["the", "of", "and", "to", "with", "that", "have", "be", "in", "a", "is", "for"]
SYLLABLES = ["ka", "lo", "mer", "tin", "sa", "vor", "pel", "dri", "nu", "gan", "ris", "to", "bel"]


def vocabulary(size: int = 6000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES, rng.integers(2, 5))))
    return sorted(words)


def document(rng: np.random.Generator, vocab: list[str], lines: int = 5) -> str:
    """A clean prose document: lines of 2-3 sentences of 8-15 words, a quarter stop words."""
    out = []
    for _ in range(lines):
        sentences = []
        for _ in range(rng.integers(2, 4)):
            count = int(rng.integers(8, 16))
            stop = rng.random(count) < 0.25
            picks = rng.integers(0, len(vocab), count)
            stops = rng.integers(0, len(STOP), count)
            words = [STOP[s] if is_stop else vocab[p] for is_stop, p, s in zip(stop, picks, stops)]
            sentences.append(" ".join(words).capitalize() + ".")
        out.append(" ".join(sentences))
    return "\n".join(out)


def replace_words(rng: np.random.Generator, text: str, vocab: list[str], count: int) -> str:
    """Replace `count` words at distinct, spread-out positions (keeps the line structure)."""
    lines = [line.split(" ") for line in text.split("\n")]
    flat = [(i, j) for i, line in enumerate(lines) for j in range(len(line))]
    picks = rng.choice(len(flat), size=count, replace=False)
    for pick in picks:
        i, j = flat[pick]
        ending = "." if lines[i][j].endswith(".") else ""
        lines[i][j] = "zq" + vocab[int(rng.integers(len(vocab)))] + ending
    return "\n".join(" ".join(line) for line in lines)


def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Reference shingles, independent of fmmm: lowercase words without punctuation."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def near_duplicate_truth(
    texts: list[str], threshold: float, skip: set[int], n: int = 5
) -> dict[int, float]:
    """Keep-first ground truth from exact Jaccard: index -> Jaccard with the earlier kept item.

    Items in `skip` (exact duplicates, removed first) take no part.
    """
    sets = [shingle_set(t, n) for t in texts]
    postings: dict[tuple[str, ...], list[int]] = {}
    for index, shingles in enumerate(sets):
        if index not in skip:
            for shingle in shingles:
                postings.setdefault(shingle, []).append(index)
    shared: Counter = Counter()
    for docs in postings.values():
        for a in range(len(docs)):
            for b in range(a):
                shared[(docs[a], docs[b])] += 1
    similar: dict[int, list[tuple[int, float]]] = {}
    for (later, earlier), inter in shared.items():
        similarity = inter / (len(sets[later]) + len(sets[earlier]) - inter)
        if similarity >= threshold:
            similar.setdefault(later, []).append((earlier, similarity))
    removed: dict[int, float] = {}
    for later in sorted(similar):
        kept = [s for earlier, s in sorted(similar[later]) if earlier not in removed]
        if kept:
            removed[later] = kept[0]
    return removed


@dataclass
class PlantedCorpus:
    folder: Path
    keys: list[str]  # global order
    texts: list[str]
    exact: set[str] = field(default_factory=set)
    near: dict[str, float] = field(default_factory=dict)  # key -> exact Jaccard with an earlier
    jaccards: dict[str, float] = field(default_factory=dict)  # planted variant -> Jaccard to base


def build_text_corpus(folder: Path, seed: int = 0, bases: int = 240, shards: int = 4):
    """Clean documents plus exact copies, near duplicates and dissimilar variants, shuffled."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    items: list[tuple[str, str]] = []
    base_texts = [document(rng, vocab, lines=int(rng.integers(8, 12))) for _ in range(bases)]
    items += [(f"base{i}", t) for i, t in enumerate(base_texts)]
    for i in range(30):  # exact duplicates: case, punctuation and spacing changed
        text = base_texts[i].upper().replace(".", " . ").replace(" ", "  ")
        items.append((f"exact{i}", text))
    planted = {}
    for i, count in enumerate([1, 2, 3] * 25 + [12, 20, 30] * 15):
        base = int(rng.integers(30, bases))
        items.append((f"variant{i}", replace_words(rng, base_texts[base], vocab, count)))
        planted[f"variant{i}"] = base
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    keys, texts = [k for k, _ in items], [t for _, t in items]
    per_shard = -(-len(items) // shards)
    for s in range(shards):
        chunk = items[s * per_shard : (s + 1) * per_shard]
        write_shard(folder / f"web-{s:06d}.jsonl", [make_sample(k, t) for k, t in chunk])
    corpus = PlantedCorpus(folder, keys, texts)
    first_seen: dict[str, int] = {}
    for index, text in enumerate(texts):
        normal = " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
        if normal in first_seen:
            corpus.exact.add(keys[index])
        else:
            first_seen[normal] = index
    exact = {i for i, key in enumerate(keys) if key in corpus.exact}
    truth = near_duplicate_truth(texts, 0.8, exact)
    corpus.near = {keys[i]: j for i, j in truth.items()}
    for key, base in planted.items():
        a, b = shingle_set(texts[keys.index(key)]), shingle_set(base_texts[base])
        corpus.jaccards[key] = len(a & b) / len(a | b)
    return corpus


def precision_recall(predicted: set[str], truth: set[str]) -> tuple[float, float]:
    hits = len(predicted & truth)
    return hits / max(len(predicted), 1), hits / max(len(truth), 1)


def smooth_image(seed: int, size: int = 48) -> np.ndarray:
    """A natural-looking (low-frequency) random image."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3)).astype(np.float64)
    from PIL import Image

    big = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big)


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> PlantedCorpus:
    return build_text_corpus(tmp_path_factory.mktemp("corpus") / "web")


@pytest.fixture
def image_shard(tmp_path) -> tuple[Path, dict]:
    """Image-text shard: originals, re-encoded/brightened copies (near dups), distinct images."""
    samples, truth = [], {"near": set(), "exact": set()}
    for i in range(20):
        samples.append(
            make_sample(f"img{i}", f"a photo number {i}", image=encode_image(smooth_image(i)))
        )
    for i in range(5):
        pixels = np.clip(smooth_image(i).astype(int) + 6, 0, 255).astype(np.uint8)
        samples.append(
            make_sample(
                f"bright{i}",
                f"another caption {i}",
                image=encode_image(pixels, "jpg"),
                ext={"image": "jpg"},
            )
        )
        truth["near"].add(f"bright{i}")
    for i in range(5, 8):
        samples.append(
            make_sample(f"copy{i}", f"a photo number {i}", image=encode_image(smooth_image(i)))
        )
        truth["exact"].add(f"copy{i}")
    path = tmp_path / "images" / "pairs-000000.tar"
    write_shard(path, samples)
    return path, truth


def write_robot_dataset(root: Path, episodes: list[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """A small fmmm robot dataset from (instruction, states (T, S), actions (T, A)) episodes."""
    from fmmm.datasets import robot

    tasks = list(dict.fromkeys(instruction for instruction, _, _ in episodes))

    def arrays():
        for index, (instruction, states, actions) in enumerate(episodes):
            frames = np.arange(len(actions), dtype=np.int64)
            episode = {
                robot.IMAGE_PREFIX + "agentview": np.full((len(frames), 8, 8, 3), index, np.uint8),
                robot.STATE_KEY: states.astype(np.float32),
                robot.ACTION_KEY: actions.astype(np.float32),
                "timestamp": (frames / 10.0).astype(np.float32),
                "frame_index": frames,
                "task_index": np.full(len(frames), tasks.index(instruction), dtype=np.int64),
            }
            yield episode, {"tasks": [instruction], "length": len(frames)}

    robot.write_dataset(root, 10, arrays(), tasks)
    return root


def random_episode(seed: int, length: int = 20, instruction: str = "pick up the red cube"):
    rng = np.random.default_rng(seed)
    states = np.cumsum(rng.normal(0, 0.05, (length, 14)), axis=0)
    actions = rng.uniform(-1, 1, (length, 7))
    return instruction, states, actions


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny open_clip model config (.json) and random weights (.safetensors)."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip")
    config_path = folder / "tiny-clip.json"
    vision = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    config_path.write_text(json.dumps({"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(str(config_path))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    save_file(model.state_dict(), str(folder / "tiny.safetensors"))
    return config_path, folder / "tiny.safetensors"
