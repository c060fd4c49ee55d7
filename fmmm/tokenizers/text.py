"""Text tokenizers: byte-level BPE trained with `tokenizers`, and open_clip's shipped CLIP vocabulary.

Output contract: `encode(texts) -> list[list[int]]` (no special tokens unless asked), `decode(ids)
-> list[str]` (special tokens dropped), `pad(ids, max_length) -> (input_ids (B, T) long, mask (B, T)
bool)`. Byte-level BPE decodes every Unicode string back exactly; special-token strings typed in
the text itself are split like ordinary text, so they can never inject a control id.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fmmm.utils.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import torch

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
MARKERS = ("image", "video", "audio", "action", "state")
SPECIAL_TOKENS = (PAD, BOS, EOS, *(f"<|{name}|>" for name in MARKERS))
TEXT_FILE = "text_tokenizer.json"
TEXT_META_FILE = "text_tokenizer_meta.json"

# A small English corpus, robot-instruction heavy, so the default tokenizer has useful merges.
BUILTIN_CORPUS = """\
Pick up the red cube and place it in the blue bowl.
Push the green block to the left side of the table.
Open the top drawer, then put the sponge inside and close it.
Stack the yellow cube on top of the red cube.
Move the gripper above the target and lower it slowly.
Turn the knob clockwise until the light switches on.
Slide the plate towards the robot and lift the cup.
Press the button on the right, then return to the start position.
A photo of a cat sitting on a wooden chair next to the window.
A small dog runs across the green grass in the park on a sunny day.
Two people are walking along the beach at sunset while the waves roll in.
The kitchen has a white table, four chairs and a bowl of fresh fruit.
A robot arm picks an apple from a basket and puts it on the counter.
The quick brown fox jumps over the lazy dog.
She said that the weather would be better tomorrow, so they waited.
Language models predict the next token from the tokens that came before.
Images are split into patches, audio into frames, and actions into bins.
The camera looks down at the workspace where the objects are placed.
In the morning the market was full of people buying bread, cheese and vegetables.
He opened the door, looked outside, and decided to take an umbrella with him.
The number of training steps was 1000, the learning rate 0.0003 and the batch size 64.
Where is the nearest station? Turn left at the corner and walk for five minutes.
Scientists measured the temperature of the water every hour for three days.
Grasp the handle firmly, pull the drawer open, and let go of the handle.
Rotate the object by ninety degrees and set it down gently on the shelf.
Reach forward, avoid the obstacle, and touch the marker with the tip of the gripper.
"""


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to encode")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{index}] is {type(text).__name__}, expected str")
        if text == "":
            raise ValueError(f"texts[{index}] is empty: nothing to encode")


def pad_ids(
    ids: Sequence[Sequence[int]], max_length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (and truncate) id lists to `max_length`: input_ids (B, T) long, mask (B, T) bool."""
    import torch

    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    input_ids = torch.full((len(ids), max_length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), max_length), dtype=torch.bool)
    for row, sequence in enumerate(ids):
        sequence = list(sequence)[:max_length]
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = True
    return input_ids, mask


class TextTokenizer:
    """Byte-level BPE over the `tokenizers` library with BOS/EOS/PAD and modality markers."""

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        for token in SPECIAL_TOKENS:
            if tokenizer.token_to_id(token) is None:
                raise ValueError(f"tokenizer lacks the special token {token}")
        tokenizer.encode_special_tokens = True
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.token_to_id(PAD)
        self.bos_id = tokenizer.token_to_id(BOS)
        self.eos_id = tokenizer.token_to_id(EOS)
        self.marker_ids = {name: tokenizer.token_to_id(f"<|{name}|>") for name in MARKERS}
        self.action_id = self.marker_ids["action"]  # closes a prompt whose action follows

    @classmethod
    def train(cls, corpus: Iterable[str], vocab_size: int = 1024) -> TextTokenizer:
        """Train byte-level BPE on an iterable of strings (deterministic for a given corpus)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        min_size = 256 + len(SPECIAL_TOKENS)
        if vocab_size < min_size:
            raise ValueError(f"vocab_size must be >= {min_size} (bytes + special tokens)")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(corpus, trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(
        self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """Encode a batch of non-empty strings to id lists."""
        _check_texts(texts)
        # encode_batch_fast skips offset tracking, which ids do not need
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        head, tail = [self.bos_id] if add_bos else [], [self.eos_id] if add_eos else []
        return [head + encoding.ids + tail for encoding in encodings]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Decode id lists back to strings, dropping special tokens."""
        rows = _id_rows(ids, self.vocab_size)
        return self.tokenizer.decode_batch(rows, skip_special_tokens=True)

    def pad(
        self, ids: Sequence[Sequence[int]], max_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id lists with `pad_id`: input_ids (B, T) long, mask (B, T) bool."""
        return pad_ids(ids, max_length, self.pad_id)

    def save(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer JSON (the `tokenizers` format) into `directory`."""
        directory = Path(directory)
        atomic_write_text(directory / TEXT_FILE, self.tokenizer.to_str())
        atomic_write_json(directory / TEXT_META_FILE, {"kind": "bpe"})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextTokenizer | ClipTextTokenizer:
        """Load a tokenizer saved by `save` (byte-level BPE or the CLIP wrapper)."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        meta_path = directory / TEXT_META_FILE
        if not meta_path.is_file():
            raise ValueError(f"no text tokenizer in {directory} (missing {TEXT_META_FILE})")
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") == "clip":
            return ClipTextTokenizer()
        return cls(Tokenizer.from_file(str(directory / TEXT_FILE)))


def _id_rows(ids, vocab_size: int) -> list[list[int]]:
    """A batch of id lists as Python ints, every id checked to lie in the vocabulary."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if not isinstance(ids, Sequence) or len(ids) == 0:
        raise ValueError("ids must be a non-empty batch of id lists")
    if not all(isinstance(row, Sequence) for row in ids):
        raise ValueError("ids must be a batch (list of id lists), got a flat list")
    rows = [[int(i) for i in row] for row in ids]
    if any(i < 0 or i >= vocab_size for row in rows for i in row):
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    return rows


@functools.cache
def default_text_tokenizer(vocab_size: int = 1024) -> TextTokenizer:
    """A byte-level BPE trained on the built-in English corpus (milliseconds, cached in memory).

    The corpus holds merges for about 800 ids, so a larger `vocab_size` stops there: read
    `.vocab_size` for the real size.
    """
    return TextTokenizer.train(BUILTIN_CORPUS.splitlines(), vocab_size=vocab_size)


class ClipTextTokenizer:
    """open_clip's CLIP BPE vocabulary (shipped in the package) with the same interface.

    CLIP lower-cases and collapses whitespace, so its round trip is not exact; use `TextTokenizer`
    where exactness matters. Modality markers are appended after CLIP's 49408 ids.
    """

    def __init__(self):
        from open_clip.tokenizer import SimpleTokenizer

        markers = [f"<|{name}|>" for name in MARKERS]
        self.tokenizer = SimpleTokenizer(additional_special_tokens=markers)
        self.bos_id = self.tokenizer.sot_token_id
        self.eos_id = self.tokenizer.eot_token_id
        self.pad_id = 0  # open_clip pads with 0; masks mark which positions are real
        self.marker_ids = {name: self.tokenizer.encoder[f"<|{name}|>"] for name in MARKERS}
        self.action_id = self.marker_ids["action"]  # closes a prompt whose action follows
        self._special = {self.bos_id, self.eos_id, *self.marker_ids.values()}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(
        self, texts: Sequence[str], add_bos: bool = True, add_eos: bool = True
    ) -> list[list[int]]:
        """Encode a batch of strings; CLIP models expect BOS and EOS, so both are on by default."""
        _check_texts(texts)
        head, tail = [self.bos_id] if add_bos else [], [self.eos_id] if add_eos else []
        # Marker strings typed in the text must not become control ids.
        return [head + self.tokenizer.encode(text.replace("<|", "< |")) + tail for text in texts]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Decode id lists (special tokens dropped); CLIP's decoding is lower-case and spaced."""
        return [
            self.tokenizer.decode([i for i in row if i not in self._special]).strip()
            for row in _id_rows(ids, self.vocab_size)
        ]

    def pad(
        self, ids: Sequence[Sequence[int]], max_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id lists with 0 (as open_clip): input_ids (B, T) long, mask (B, T) bool."""
        return pad_ids(ids, max_length, self.pad_id)

    def save(self, directory: str | os.PathLike) -> None:
        """Record that this is the shipped CLIP vocabulary (nothing else to store)."""
        atomic_write_json(Path(directory) / TEXT_META_FILE, {"kind": "clip"})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ClipTextTokenizer:
        tokenizer = TextTokenizer.load(directory)
        if not isinstance(tokenizer, cls):
            raise ValueError(f"{directory} holds a byte-level BPE tokenizer, not CLIP's")
        return tokenizer
