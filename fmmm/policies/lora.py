"""LoRA adapters (Hu et al. 2021) on any fmmm module, through peft.

    network = add_lora(network, LoRAConfig(rank=8, alpha=16, target_modules=["qkv"]))
    save_adapter(network, run_dir / "adapter")      # adapter_model.safetensors + adapter_config.json
    network = load_adapter(base_network, run_dir / "adapter")
    merged = merge_adapter(network)                 # plain module, W <- W + (alpha / rank) B A

Only the low-rank matrices (and the modules named in `trained_modules`) train; the base weights stay
frozen and are saved apart from the adapter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from torch import nn

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass
class LoRAConfig:
    """Rank, scale and placement of the low-rank adapters."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Names (suffixes of module paths) of the nn.Linear layers that get adapters.
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "out", "gate_up", "down"])
    # Modules trained in full and saved with the adapter (e.g. a freshly initialised head).
    trained_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")


def add_lora(module: nn.Module, config: LoRAConfig) -> PeftModel:
    """Wrap `module` with fresh adapters; only adapter (and `trained_modules`) weights require grad."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        modules_to_save=list(config.trained_modules) or None,
    )
    try:
        return get_peft_model(module, peft_config)
    except ValueError as exc:
        raise ValueError(f"cannot add LoRA adapters: {' '.join(str(exc).split())}") from None


def save_adapter(network: PeftModel, directory: str | os.PathLike) -> Path:
    """Write only the adapter weights (safetensors) and their config (JSON) to `directory`."""
    from fmmm.utils.io import atomic_dir

    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        network.save_pretrained(tmp, safe_serialization=True)
    return directory / ADAPTER_FILE


def load_adapter(
    module: nn.Module, directory: str | os.PathLike, trainable: bool = False
) -> PeftModel:
    """Attach the adapter saved in `directory` to `module` (which holds the base weights)."""
    from peft import PeftModel

    directory = Path(directory)
    if not (directory / ADAPTER_FILE).is_file():
        raise ValueError(f"no LoRA adapter at {directory} (missing {ADAPTER_FILE})")
    return PeftModel.from_pretrained(module, directory, is_trainable=trainable)


def merge_adapter(network: PeftModel) -> nn.Module:
    """Fold the adapters into the base weights and return the plain module."""
    return network.merge_and_unload()


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts of `module`."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return trainable, total


def base_state_dict(network: PeftModel) -> dict[str, torch.Tensor]:
    """The wrapped module's own state dict, without adapters: the frozen base weights."""
    state = {}
    for key, value in network.get_base_model().state_dict().items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        key = key.replace(".base_layer.", ".").replace(".original_module.", ".")
        state[key] = value
    return state
