import copy

import pytest
import torch

from fmmm.models.backbone import Transformer, preset
from fmmm.policies.lora import (
    ADAPTER_FILE,
    LoRAConfig,
    add_lora,
    count_parameters,
    load_adapter,
    merge_adapter,
    save_adapter,
)


def _backbone() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("debug", dim=128, n_heads=4, n_kv_heads=4, ffn_hidden=512))


def _perturb_adapters(network) -> None:
    # LoRA starts as the identity (B = 0); give B values so the adapter changes outputs.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_lora_trains_under_five_percent_of_parameters_and_freezes_base():
    network = add_lora(_backbone(), LoRAConfig(rank=4, alpha=8))
    trainable, total = count_parameters(network)
    assert 0 < trainable / total < 0.05
    names = [n for n, p in network.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_merged_model_matches_base_plus_adapter():
    network = add_lora(_backbone(), LoRAConfig(rank=4, alpha=8))
    _perturb_adapters(network)
    x = torch.randn(2, 5, 128)
    with torch.no_grad():
        adapted, _ = network(x)
        base_only, _ = _backbone()(x)
        merged, _ = merge_adapter(network)(x)
    assert not torch.allclose(adapted, base_only, atol=1e-4)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)


def test_merge_folds_scaled_low_rank_product_into_weight():
    config = LoRAConfig(rank=4, alpha=8, target_modules=["qkv"])
    base = _backbone()
    weight = base.layers[0].attn.qkv.weight.detach().clone()
    network = add_lora(copy.deepcopy(base), config)
    _perturb_adapters(network)
    layer = network.base_model.model.layers[0].attn.qkv
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    merged = merge_adapter(network)
    expected = weight + (config.alpha / config.rank) * b @ a
    torch.testing.assert_close(merged.layers[0].attn.qkv.weight, expected)


def test_saved_adapter_holds_only_adapter_weights_and_reloads_exactly(tmp_path):
    from safetensors.torch import load_file

    network = add_lora(_backbone(), LoRAConfig(rank=4, alpha=8))
    _perturb_adapters(network)
    path = save_adapter(network, tmp_path / "adapter")
    assert path.name == ADAPTER_FILE and (tmp_path / "adapter" / "adapter_config.json").is_file()
    saved = load_file(path)
    assert saved and all("lora_" in key for key in saved)
    assert sum(t.numel() for t in saved.values()) == count_parameters(network)[0]
    reloaded = load_adapter(_backbone(), tmp_path / "adapter")
    x = torch.randn(1, 4, 128)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x)[0], network(x)[0])


def test_training_step_changes_adapters_not_base_weights():
    network = add_lora(_backbone(), LoRAConfig(rank=4, alpha=8))
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=0.1)
    out, _ = network(torch.randn(2, 3, 128))
    out.pow(2).mean().backward()
    optimizer.step()
    changed = {n for n, p in network.named_parameters() if not torch.equal(before[n], p)}
    # B starts at zero, so the first step moves B (A's gradient is B^T times something, zero).
    assert changed == {n for n in before if "lora_B" in n}


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(rank=0), "rank"), (dict(alpha=0), "alpha"), (dict(target_modules=[]), "target_modules")],
)
def test_lora_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**kwargs)


def test_lora_rejects_target_modules_absent_from_model():
    with pytest.raises(ValueError, match="cannot add LoRA adapters"):
        add_lora(_backbone(), LoRAConfig(target_modules=["no_such_layer"]))


def test_load_adapter_rejects_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapter"):
        load_adapter(_backbone(), tmp_path)
