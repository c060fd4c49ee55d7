"""Hugging Face conventions for saved model folders: model card, hub ids, explicit upload.

    write_model_card(folder, config_dict, {"training_data": ..., "evaluation": ..., "commands": [...]})
    read_model_card(folder)                        # the card info dict back (front matter "fmmm")
    resolve_model_dir("org/name")                  # a snapshot in the local Hugging Face cache
    push_folder(folder, "org/name")                # upload, only when called; one-line error offline

Nothing here downloads: a hub id resolves only from the local cache (`HF_HUB_CACHE`, else
huggingface_hub's default); fetch it first with `hf download org/name`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
CARD_KEY = "fmmm"  # front-matter key holding the card info as given
CARD_SECTIONS = {
    "training_data": "Training data",
    "evaluation": "Evaluation results",
    "commands": "Commands",
}
# org/name with an optional @revision, as the Hub spells repository ids
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def _block(value: Any) -> str:
    """A card section body: text as is, anything else as a JSON code block."""
    if isinstance(value, str):
        return value.strip()
    return "```json\n" + json.dumps(value, indent=2, sort_keys=True) + "\n```"


def _evaluation_table(evaluation: Any) -> str | None:
    """A markdown table when `evaluation` is fmmm's per-task summary ({task: {success_rate, ...}})."""
    if not isinstance(evaluation, dict) or not evaluation:
        return None
    rows = ["| task | episodes | success | 95% CI |", "| --- | --- | --- | --- |"]
    for task, summary in evaluation.items():
        if not isinstance(summary, dict) or "success_rate" not in summary:
            return None
        low, high = summary.get("success_ci95", (float("nan"), float("nan")))
        rows.append(
            f"| {task} | {summary.get('episodes', '')} | {summary['success_rate']:.1%} | "
            f"[{low:.1%}, {high:.1%}] |"
        )
    return "\n".join(rows)


def model_card_text(config: dict[str, Any], card: dict[str, Any] | None = None) -> str:
    """The README.md of a saved model: metadata front matter, then config, data, results, commands.

    Args:
        config: what config.json holds.
        card: optional info; "title", "description", "training_data", "evaluation" and
            "commands" get their own sections, every key is kept in the front matter.
    """
    from huggingface_hub import ModelCardData

    import fmmm

    card = dict(card or {})
    try:
        json.dumps(card)  # it is read back from the front matter
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the model card info must be JSON data: {exc}") from None
    data = ModelCardData(
        library_name="fmmm",
        license="apache-2.0",
        tags=["fmmm", "multimodal", "robotics"],
        **{CARD_KEY: card} if card else {},
    )
    title = card.get("title") or "fmmm MultimodalModel"
    parts = [f"---\n{data.to_yaml()}\n---", f"# {title}"]
    if card.get("description"):
        parts.append(str(card["description"]).strip())
    backbone = config.get("backbone", {})
    parts.append(
        f"A `MultimodalModel` saved by fmmm {fmmm.__version__}: width {backbone.get('dim')}, "
        f"{backbone.get('n_layers')} layers, {config.get('image_size')} px images; weights in "
        "`model.safetensors` "
        f"({config.get('torch_dtype', 'float32')}), tokenizers in `tokenizers/`.\n\n"
        "```python\nfrom fmmm.models.factory import load_model_and_builder\n\n"
        'model, builder = load_model_and_builder("folder or org/name")\n```'
    )
    for key, heading in CARD_SECTIONS.items():
        if key not in card:
            continue
        value = card[key]
        if key == "commands" and isinstance(value, list):
            body = "```bash\n" + "\n".join(str(command) for command in value) + "\n```"
        else:
            body = (key == "evaluation" and _evaluation_table(value)) or _block(value)
        parts.append(f"## {heading}\n\n{body}")
    parts.append(f"## Config\n\n{_block(config)}")
    return "\n\n".join(parts) + "\n"


def write_model_card(
    directory: str | os.PathLike, config: dict[str, Any], card: dict[str, Any] | None = None
) -> Path:
    """Write `directory/README.md` (see `model_card_text`); returns its path."""
    from fmmm.utils.io import atomic_write_text

    path = Path(directory) / CARD_FILE
    atomic_write_text(path, model_card_text(config, card))
    return path


def read_model_card(directory: str | os.PathLike) -> dict[str, Any]:
    """The card info a folder's README.md was written with ({} when it has none)."""
    from huggingface_hub import ModelCard

    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return {}
    return dict(ModelCard.load(path).data.to_dict().get(CARD_KEY) or {})


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repository id (`org/name`, optionally `@revision`)."""
    return bool(HUB_ID.match(name))


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; a hub id as its snapshot folder in the local Hugging Face cache.

    Never downloads; a hub id missing from the cache raises ValueError in one line.
    """
    path = Path(name_or_path)
    name = str(name_or_path)
    if path.exists() or not is_hub_id(name):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = name.partition("@")
    cache_dir = os.environ.get("HF_HUB_CACHE")  # read per call: tests and users may set it late
    try:
        snapshot = snapshot_download(
            repo_id, revision=revision or None, cache_dir=cache_dir, local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        where = cache_dir or "the default Hugging Face cache"
        raise ValueError(
            f"{name} is neither a folder nor a model in {where}; "
            f"download it first (hf download {repo_id})"
        ) from None
    return Path(snapshot)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return flag in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def push_folder(
    directory: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    commit_message: str = "Upload fmmm model",
) -> str:
    """Upload a saved folder to the Hub repository `repo_id` (created if missing); returns its url.

    Uses the token huggingface_hub finds (`hf auth login`); offline or on a network or
    permission failure it raises RuntimeError with a one-line message.
    """
    if not is_hub_id(repo_id) or "@" in repo_id:
        raise ValueError(f"repo_id must read org/name, got {repo_id!r}")
    if _offline():
        raise RuntimeError(
            f"cannot push to {repo_id}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE)"
        )
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(directory), commit_message=commit_message
        )
    except Exception as exc:  # network, auth and HTTP errors of several libraries: one line
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise RuntimeError(f"cannot push to {repo_id}: {type(exc).__name__}: {reason}") from None
    return str(getattr(commit, "commit_url", "") or f"https://huggingface.co/{repo_id}")
