"""One factory for a `MultimodalModel` and its preprocessing (open_clip's create_model_and_transforms).

    model, builder = create_model_and_builder(config, {"text": text_tokenizer, "action": bins})
    model.save_pretrained(path, tokenizers=builder_tokenizers(builder))
    model, builder = load_model_and_builder(path)       # the same model and builder back

The `SequenceBuilder` carries the tokenizers and places action bins at `config.action_offset`, so a
model built, saved and loaded here reads its action tokens from the same slice of the logits.
Recipes, policies, `fmmm.encoders.load` and the benchmarks all build through these functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fmmm.models.multimodal import TOKENIZERS_DIR, MultimodalConfig, MultimodalModel
from fmmm.tokenizers.sequence import SequenceBuilder

# folder name under tokenizers/ -> (tokenizer class, SequenceBuilder attribute)
TOKENIZERS = {
    "text": ("TextTokenizer", "text_tokenizer"),
    "image": ("ImageTokenizer", "image_tokenizer"),
    "video": ("VideoTokenizer", "video_tokenizer"),
    "audio": ("AudioTokenizer", "audio_tokenizer"),
    "action": ("ActionTokenizer", "action_tokenizer"),
    "state": ("StateNormalizer", "state_normalizer"),
}


def builder_for(config: MultimodalConfig, tokenizers: dict[str, Any]) -> SequenceBuilder:
    """The sequence builder of a model of `config` with `tokenizers` ({"text": ..., ...}).

    Image and video tokenizers default to the config's image size, patch size and tubelet; the
    text tokenizer is required and must fit the model's text vocabulary.
    """
    from fmmm.tokenizers.image import ImageTokenizer, VideoTokenizer

    text = tokenizers.get("text")
    if text is None:
        raise ValueError("a model's sequence builder needs a text tokenizer")
    if text.vocab_size > config.text_vocab_size:
        raise ValueError(
            f"the text tokenizer has {text.vocab_size} ids; raise model.text_vocab_size "
            f"({config.text_vocab_size})"
        )
    action, state = tokenizers.get("action"), tokenizers.get("state")
    if action is not None and action.num_bins != config.action_bins:
        raise ValueError(
            f"model.action_bins is {config.action_bins} but the action tokenizer has "
            f"{action.num_bins} bins"
        )
    if state is not None and state.dims != config.state_dim:
        raise ValueError(
            f"model.state_dim is {config.state_dim} but the state normalizer was fitted on "
            f"{state.dims}-dimensional states"
        )
    size, patch = config.image_size, config.patch_size
    return SequenceBuilder(
        text,
        image_tokenizer=tokenizers.get("image") or ImageTokenizer(size, patch),
        video_tokenizer=tokenizers.get("video")
        or VideoTokenizer(size, patch, config.video_tubelet),
        audio_tokenizer=tokenizers.get("audio"),
        action_tokenizer=action,
        state_normalizer=state,
        action_offset=config.action_offset,
    )


def create_model_and_builder(
    config: MultimodalConfig, tokenizers: dict[str, Any]
) -> tuple[MultimodalModel, SequenceBuilder]:
    """A freshly initialized model of `config` and its sequence builder."""
    builder = builder_for(config, tokenizers)
    return MultimodalModel(config), builder


def builder_tokenizers(builder: SequenceBuilder) -> dict[str, Any]:
    """The builder's tokenizers by folder name, as `save_pretrained(tokenizers=...)` takes them."""
    found = {name: getattr(builder, attribute) for name, (_, attribute) in TOKENIZERS.items()}
    return {name: tokenizer for name, tokenizer in found.items() if tokenizer is not None}


def load_tokenizers(directory: str | os.PathLike) -> dict[str, Any]:
    """Every tokenizer saved in `directory/tokenizers/<name>/`, by name."""
    import fmmm.tokenizers

    root = Path(directory) / TOKENIZERS_DIR
    return {
        name: getattr(fmmm.tokenizers, cls).load(root / name)
        for name, (cls, _) in TOKENIZERS.items()
        if (root / name).is_dir()
    }


def load_model_and_builder(
    directory: str | os.PathLike, device: str = "cpu"
) -> tuple[MultimodalModel, SequenceBuilder]:
    """A model saved by `save_pretrained` with the tokenizers saved beside it; `directory` may be
    a hub id in the local Hugging Face cache (`fmmm.models.hub.resolve_model_dir`)."""
    from fmmm.models.hub import resolve_model_dir

    directory = resolve_model_dir(directory)
    model = MultimodalModel.from_pretrained(directory, device=device)
    tokenizers = load_tokenizers(directory)
    if "text" not in tokenizers:
        raise ValueError(
            f"{directory / TOKENIZERS_DIR / 'text'} is missing: save the text tokenizer with the model"
        )
    return model, builder_for(model.config, tokenizers)
