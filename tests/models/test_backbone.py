"""Backbone properties: causality, packing, KV cache, MoE, gradients, config validation."""

import pytest
import torch

from fmmm.models.backbone import KVCache, PrefixPasses, Transformer, TransformerConfig, preset


def _model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(preset("debug", **overrides)).eval()


def _inputs(batch: int = 2, length: int = 12, dim: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True}, {"n_experts": 4}])
def test_output_at_t_unchanged_when_later_tokens_change(overrides):
    model = _model(**overrides)
    x = _inputs()
    changed = x.clone()
    changed[:, 7:] = torch.randn_like(changed[:, 7:])
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_explicit_causal_mask_equals_is_causal_path():
    model = _model()
    x = _inputs()
    mask = torch.ones(12, 12, dtype=torch.bool).tril().expand(2, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(x, attention_mask=mask)[0], rtol=0, atol=1e-5)


def test_packed_samples_do_not_attend_across_boundaries():
    model = _model()
    x = _inputs(batch=1, length=10)
    sample_ids = torch.tensor([[1] * 4 + [2] * 6])
    same = sample_ids[:, :, None] == sample_ids[:, None, :]
    mask = same & torch.ones(10, 10, dtype=torch.bool).tril()
    t = torch.cat([torch.arange(4), torch.arange(6)])
    positions = torch.nn.functional.pad(t[None, :, None], (0, 2))
    with torch.no_grad():
        packed, _ = model(x, positions, mask)
        second_alone, _ = model(x[:, 4:], positions[:, 4:] * 1)
        other = x.clone()
        other[:, :4] = torch.randn(4, 64)
        packed_other, _ = model(other, positions, mask)
    torch.testing.assert_close(packed[:, 4:], second_alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[:, 4:], packed_other[:, 4:], rtol=0, atol=1e-6)


def test_prefix_positions_attend_bidirectionally():
    model = _model()
    x = _inputs(batch=1, length=8)
    prefix = torch.tensor([[True] * 4 + [False] * 4])
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    mask = causal | (prefix[:, :, None] & prefix[:, None, :])
    changed = x.clone()
    changed[:, 3] += 1.0
    with torch.no_grad():
        a, _ = model(x, attention_mask=mask)
        b, _ = model(changed, attention_mask=mask)
    assert not torch.allclose(a[:, 0], b[:, 0])  # position 0 sees prefix position 3


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True, "n_kv_heads": 1}, {"n_experts": 4}])
def test_kv_cache_matches_full_forward(overrides):
    model = _model(**overrides)
    x = _inputs(length=10)
    with torch.no_grad():
        full, _ = model(x)
        cache = KVCache(model.config, batch_size=2, max_len=16)
        parts = [model(x[:, :6], cache=cache)[0]]
        for t in range(6, 10):
            parts.append(model(x[:, t : t + 1], cache=cache)[0])
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


def test_kv_cache_with_prefix_mask_and_explicit_positions_matches_full_forward():
    model = _model()
    x = _inputs(batch=1, length=9)
    positions = torch.tensor(
        [[[0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]] + [[t, 0, 0] for t in range(3, 7)]]
    )
    prefix = torch.tensor([[True] * 5 + [False] * 4])
    mask = torch.ones(9, 9, dtype=torch.bool).tril() | (prefix[:, :, None] & prefix[:, None, :])
    with torch.no_grad():
        full, _ = model(x, positions, mask)
        cache = KVCache(model.config, 1, 9)
        parts = [model(x[:, :5], positions[:, :5], mask[:, :5, :5], cache=cache)[0]]
        for t in range(5, 9):
            parts.append(model(x[:, t : t + 1], positions[:, t : t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-5)


def _padded_prefix_and_block(prefix: int = 6, block: int = 3):
    """Two rows: a bidirectional prefix (row 1 padded after 4 positions), then `block` positions
    after each row's prefix that see its prefix and each other (a flow head's action chunk)."""
    valid = torch.tensor([[True] * prefix, [True] * 4 + [False] * (prefix - 4)])
    same = valid[:, :, None] & valid[:, None, :]
    prefix_mask = same | torch.eye(prefix, dtype=torch.bool)
    t = torch.arange(prefix)[None, :, None].expand(2, prefix, 1)
    prefix_positions = torch.nn.functional.pad(t, (0, 2))
    starts = valid.sum(dim=1)
    t = (starts[:, None] + torch.arange(block))[:, :, None]
    block_positions = torch.nn.functional.pad(t, (0, 2))
    keys = torch.cat([valid, torch.ones(2, block, dtype=torch.bool)], dim=1)
    block_mask = keys[:, None, :].expand(2, block, prefix + block)
    return prefix_positions, prefix_mask, block_positions, block_mask


@pytest.mark.parametrize(
    "overrides", [{}, {"qk_norm": True, "n_kv_heads": 1}, {"n_experts": 4}, {"n_layers": 1}]
)
def test_prefix_passes_match_forward_over_the_cache(overrides):
    model = _model(**overrides)
    prefix_positions, prefix_mask, positions, mask = _padded_prefix_and_block()
    prefix = _inputs(length=6)
    with torch.no_grad():
        cache = KVCache(model.config, 2, 9)
        model.fill_cache(prefix, prefix_positions, prefix_mask, cache)
        assert cache.length == 6
        passes = PrefixPasses(model, positions, mask, cache)
        for seed in (2, 3):  # a second pass overwrites the first one's keys and values
            x = _inputs(length=3, seed=seed)
            hidden = passes(x)
            assert cache.length == 6
            reference = KVCache(model.config, 2, 9)
            model(prefix, prefix_positions, prefix_mask, reference)
            expected, _ = model(x, positions, mask, reference)
            torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-5)


def test_prefix_passes_without_padding_need_no_mask():
    model = _model()
    x = _inputs(batch=1, length=9)
    positions = torch.arange(9)[None, :, None].expand(1, 9, 1)
    positions = torch.nn.functional.pad(positions, (0, 2))
    full_mask = torch.ones(1, 9, 9, dtype=torch.bool)
    full_mask[:, :6, 6:] = False  # the prefix does not see the block
    with torch.no_grad():
        full, _ = model(x, positions, full_mask)
        cache = KVCache(model.config, 1, 9)
        model.fill_cache(x[:, :6], positions[:, :6], full_mask[:, :6, :6], cache)
        passes = PrefixPasses(model, positions[:, 6:], full_mask[:, 6:], cache)
        assert passes.mask is None
        torch.testing.assert_close(passes(x[:, 6:]), full[:, 6:], rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="overflow"):
            PrefixPasses(model, positions[:, 5:], torch.ones(1, 4, 10, dtype=torch.bool), cache)


def test_fill_cache_stores_the_keys_and_values_of_forward():
    model = _model()
    prefix_positions, prefix_mask, _, _ = _padded_prefix_and_block()
    x = _inputs(length=6)
    with torch.no_grad():
        filled, forward = KVCache(model.config, 2, 6), KVCache(model.config, 2, 6)
        model.fill_cache(x, prefix_positions, prefix_mask, filled)
        model(x, prefix_positions, prefix_mask, forward)
    assert filled.length == forward.length == 6
    for ours, theirs in zip(filled.keys + filled.values, forward.keys + forward.values):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_kv_cache_overflow_raises():
    model = _model()
    cache = KVCache(model.config, 1, 4)
    with pytest.raises(ValueError, match="overflow"):
        model(_inputs(batch=1, length=5), cache=cache)


def test_moe_routes_every_token_and_aux_loss_has_gradients():
    model = _model(n_experts=4, experts_top_k=2).train()
    x = _inputs(length=16).requires_grad_()
    hidden, aux = model(x)
    assert torch.isfinite(aux) and aux > 0
    for block in model.layers:
        stats = block.mlp.last_stats
        assert int(stats["tokens_per_expert"].sum()) == 2 * 16 * 2
        assert int(stats["dropped"]) == 0
    aux.backward()
    assert model.layers[0].mlp.router.weight.grad.abs().sum() > 0


def test_moe_capacity_drops_overflow_assignments():
    model = _model(n_experts=4, experts_top_k=1, capacity_factor=0.5)
    with torch.no_grad():
        model(_inputs(length=16))
    stats = model.layers[0].mlp.last_stats
    capacity = 0.5 * 32 / 4
    assert int(stats["tokens_per_expert"].max()) <= capacity
    assert int(stats["dropped"]) + int(stats["tokens_per_expert"].sum()) == 32


@pytest.mark.parametrize(
    "overrides", [{}, {"qk_norm": True}, {"n_experts": 4}, {"checkpoint_activations": True}]
)
def test_every_parameter_receives_a_gradient(overrides):
    model = _model(**overrides).train()
    hidden, aux = model(_inputs())
    (hidden.square().mean() + aux).backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing


def test_activation_checkpointing_gives_same_gradients():
    grads = []
    for flag in (False, True):
        model = _model(checkpoint_activations=flag).train()
        model(_inputs())[0].square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_same_seed_gives_same_weights_and_outputs():
    a, b = _model(seed=3), _model(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(a(_inputs())[0], b(_inputs())[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim=100, n_heads=3), "divisible by n_heads"),
        (dict(n_layers=0), "n_layers"),
        (dict(n_heads=8, n_kv_heads=3), "n_kv_heads"),
        (dict(n_experts=1), "n_experts"),
        (dict(n_experts=4, experts_top_k=5), "experts_top_k"),
    ],
)
def test_bad_config_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**kwargs)


def test_wrong_input_width_raises():
    with pytest.raises(ValueError, match="expected embeddings"):
        _model()(torch.randn(1, 4, 32))
