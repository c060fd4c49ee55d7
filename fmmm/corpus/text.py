"""Short English documents about the tabletop world: spatial relations, instructions, sounds."""

from __future__ import annotations

import numpy as np

from fmmm.corpus.scenes import COLOURS, SHAPES

RELATIONS = ("to the left of", "to the right of", "behind", "in front of", "next to")
VERBS = ("Pick up", "Push", "Move", "Lift", "Slide")
PLACES = ("to the left", "to the right", "to the back", "to the front", "into the centre")
SOUNDS = ("a steady tone", "a rising chirp", "a falling chirp", "a burst of noise", "a slow rhythm")


def _thing(rng: np.random.Generator) -> str:
    return (
        f"the {COLOURS[int(rng.integers(len(COLOURS)))]} {SHAPES[int(rng.integers(len(SHAPES)))]}"
    )


def _sentence(rng: np.random.Generator) -> str:
    kind = int(rng.integers(4))
    if kind == 0:
        rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
        text = f"{_thing(rng)} is {rel} {_thing(rng)}."
    elif kind == 1:
        verb = VERBS[int(rng.integers(len(VERBS)))].lower()
        text = f"{verb} {_thing(rng)} {PLACES[int(rng.integers(len(PLACES)))]}."
    elif kind == 2:
        count = int(rng.integers(1, 4))
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        amount = "is one" if count == 1 else f"are {count}"
        text = f"there {amount} {colour} object{'s' if count > 1 else ''} on the table."
    else:
        text = f"the robot hears {SOUNDS[int(rng.integers(len(SOUNDS)))]} and stops."
    return text[0].upper() + text[1:]


def text_document(rng: np.random.Generator) -> str:
    """One to three sentences."""
    return " ".join(_sentence(rng) for _ in range(int(rng.integers(1, 4))))
