"""MultimodalModel on real sequence-builder batches: masks, losses, decoding, save/load."""

import pytest
import torch

from fmmm.models.backbone import preset
from fmmm.models.multimodal import MultimodalConfig, MultimodalModel
from fmmm.tokenizers import ActionTokenizer, ImageTokenizer, SequenceBuilder, default_text_tokenizer


@pytest.fixture(scope="module")
def builder() -> SequenceBuilder:
    actions = torch.rand(64, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return SequenceBuilder(
        default_text_tokenizer(512),
        image_tokenizer=ImageTokenizer(image_size=16, patch_size=8),
        action_tokenizer=ActionTokenizer(num_bins=32).fit(actions),
    )


def _model(builder, seed: int = 0, **overrides) -> MultimodalModel:
    torch.manual_seed(seed)
    settings = dict(
        text_vocab_size=builder.action_offset, action_bins=32, image_size=16, patch_size=8
    )
    settings.update(state_dim=5, embed_dim=16, **overrides)
    config = MultimodalConfig(backbone=preset("debug"), **settings)
    return MultimodalModel(config).eval()


def _image(seed: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _vla(builder, seed: int, actions: bool = True):
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(5, generator=gen)
    chunk = torch.rand(2, 7, generator=gen) * 2 - 1 if actions else None
    return builder.vla_sample([_image(seed)], state, "pick up the red cube", chunk)


def test_forward_returns_logits_losses_with_gradients_everywhere(builder):
    model = _model(builder, z_loss_weight=1e-4).train()
    samples = [
        _vla(builder, 0),
        builder.caption_sample("a red cube", image=_image(1)),
        builder.text_sample("hello"),
    ]
    batch = builder.build(samples, context_length=64)
    out = model(batch)
    assert out["logits"].shape == (*batch.input_ids.shape, model.config.vocab_size)
    assert torch.isfinite(out["loss"]) and out["z_loss"] > 0
    (out["loss"] + sum(model.embed_pooled(batch, m).sum() for m in ("text", "image"))).backward()
    unused = (
        "encoders.video",
        "encoders.audio",
        "pooled_heads.video",
        "pooled_heads.audio",
        "pooled_heads.state",
    )
    missing = [
        n
        for n, p in model.named_parameters()
        if (p.grad is None or not p.grad.abs().sum() > 0) and not n.startswith(unused)
    ]
    assert not missing


def test_packed_sample_output_equals_sample_alone(builder):
    model = _model(builder)
    first, second = _vla(builder, 0), builder.text_sample("the robot moves the cube")
    with torch.no_grad():
        packed = model(builder.build([first, second], context_length=128))
        alone = model(builder.build([second], context_length=128))
    n_first = int((builder.build([first], 128).sample_ids == 1).sum())
    n_second = int(builder.build([second], 128).sample_ids.eq(1).sum())
    torch.testing.assert_close(
        packed["logits"][0, n_first : n_first + n_second],
        alone["logits"][0, :n_second],
        rtol=0,
        atol=1e-4,
    )


def test_prefill_then_decode_matches_full_forward(builder):
    model = _model(builder)
    full_batch = builder.build([_vla(builder, 3)], context_length=80, pack=False)
    length = int(full_batch.sample_ids.eq(1).sum())
    n_actions = 14
    prefix_batch = builder.build(
        [_vla(builder, 3, actions=False)], context_length=length - n_actions, pack=False
    )
    with torch.no_grad():
        full = model(full_batch)["logits"][:, :length]
        cache = model.new_cache(1, length)
        logits = [model.prefill(prefix_batch, cache)["logits"]]
        for t in range(length - n_actions, length):
            step = model.decode(
                full_batch.input_ids[:, t : t + 1], full_batch.positions[:, t : t + 1], cache
            )
            logits.append(step["logits"])
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=0, atol=1e-5)


def test_save_then_load_gives_identical_outputs(builder, tmp_path):
    model = _model(builder, tie_embeddings=True)
    batch = builder.build([_vla(builder, 4)], context_length=64)
    model.save_pretrained(tmp_path / "m")
    loaded = MultimodalModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["logits"], model(batch)["logits"], rtol=0, atol=0)
    assert not list((tmp_path / "m").glob("*.pt")) and not list((tmp_path / "m").glob("*.bin"))


def test_pooled_embeddings_are_unit_norm_and_seeded(builder):
    batch = builder.build(
        [builder.image(_image(i)) for i in range(3)], context_length=8, pack=False
    )
    a = _model(builder, seed=1).embed_pooled(batch, "image")
    b = _model(builder, seed=1).embed_pooled(batch, "image")
    assert a.shape == (3, 16)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_features_row_count_mismatch_raises(builder):
    batch = builder.build([_vla(builder, 0)], context_length=64)
    batch.features["image"] = batch.features["image"][:-1]
    with pytest.raises(ValueError, match="rows"):
        _model(builder)(batch)


def test_from_pretrained_missing_dir_raises(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        MultimodalModel.from_pretrained(tmp_path)


def test_model_with_timm_vision_tower_runs_and_reloads(tmp_path):
    torch.manual_seed(0)
    text = default_text_tokenizer(512)
    builder = SequenceBuilder(text, image_tokenizer=ImageTokenizer(image_size=32, patch_size=16))
    config = MultimodalConfig(
        backbone=preset("debug"),
        text_vocab_size=text.vocab_size,
        image_size=32,
        patch_size=16,
        vision_tower="timm:vit_tiny_patch16_224",
    )
    model = MultimodalModel(config).eval()
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    batch = builder.build([builder.caption_sample("a cube", image=image)], context_length=16)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(batch)["logits"]
        torch.testing.assert_close(
            MultimodalModel.from_pretrained(tmp_path)(batch)["logits"], expected
        )


def test_moe_model_adds_balance_loss_to_total_loss(builder):
    model = _model(builder).train()
    moe = MultimodalModel(
        MultimodalConfig(
            backbone=preset("debug", n_experts=4),
            text_vocab_size=builder.action_offset,
            action_bins=32,
            image_size=16,
            patch_size=8,
            state_dim=5,
        )
    )
    batch = builder.build([_vla(builder, 0)], context_length=64)
    out = moe(batch)
    assert out["moe_aux_loss"] > 0
    torch.testing.assert_close(out["loss"], out["ce_loss"] + out["aux_loss"])
    assert model(batch)["aux_loss"] == 0


def _image_embeddings(model, builder, samples) -> torch.Tensor:
    """Embeddings at the image positions of a one-row batch of `samples`."""
    from fmmm.tokenizers.sequence import Modality

    batch = builder.build(samples, context_length=128)
    with torch.no_grad():
        x = model.embed_batch(batch)
    return x[batch.modality == int(Modality.IMAGE)]


def test_film_conv_stem_sees_each_samples_own_instruction(builder):
    model = _model(builder, vision_tower="conv", vision_film=True)
    with torch.no_grad():
        for layer in model.encoders["image"].film:
            layer.weight.normal_()
    state = torch.zeros(5)
    red = builder.vla_sample([_image(0)], state, "reach the red cube")
    blue = builder.vla_sample([_image(0)], state, "reach the blue cylinder")
    other = builder.vla_sample([_image(1)], state, "open the drawer")
    assert not torch.allclose(
        _image_embeddings(model, builder, [red]), _image_embeddings(model, builder, [blue])
    )
    # packed behind another sample, the image is still conditioned on its own instruction only
    packed = _image_embeddings(model, builder, [other, red])
    alone = _image_embeddings(model, builder, [red])
    torch.testing.assert_close(packed[-4:], alone, rtol=1e-3, atol=1e-3)
    assert (packed[:4] - _image_embeddings(model, builder, [other])).abs().max() < 1e-3
    plain = _model(builder, vision_tower="conv")
    torch.testing.assert_close(
        _image_embeddings(plain, builder, [red]), _image_embeddings(plain, builder, [blue])
    )
    with pytest.raises(ValueError, match="vision_tower='conv'"):
        _model(builder, vision_film=True)


def test_film_condition_tells_word_order_apart_with_position_gates(builder):
    """A bag of words cannot tell which cube goes on which: the position gates can."""
    state = torch.zeros(5)
    red_on_green = builder.vla_sample([_image(0)], state, "stack the red cube on the green cube")
    green_on_red = builder.vla_sample([_image(0)], state, "stack the green cube on the red cube")
    other = builder.vla_sample([_image(1)], state, "open the drawer")
    blind = _model(builder, vision_tower="conv", vision_film=True, film_text_positions=0)
    gated = _model(builder, vision_tower="conv", vision_film=True, film_text_positions=8)
    assert blind.film_text_gates is None and gated.film_text_gates.shape == (
        8,
        gated.config.backbone.dim,
    )
    with torch.no_grad():
        for model in (blind, gated):
            for layer in model.encoders["image"].film:
                layer.weight.normal_()
        gated.encoders["image"].load_state_dict(blind.encoders["image"].state_dict())
        gated.embed.load_state_dict(blind.embed.state_dict())
    # zero gates (as initialized) are the plain mean
    torch.testing.assert_close(
        _image_embeddings(gated, builder, [red_on_green]),
        _image_embeddings(blind, builder, [red_on_green]),
    )
    swapped = _image_embeddings(blind, builder, [red_on_green]) - _image_embeddings(
        blind, builder, [green_on_red]
    )
    assert swapped.abs().max() < 1e-3  # the same words, summed in another order
    with torch.no_grad():
        gated.film_text_gates.normal_()
    swapped = _image_embeddings(gated, builder, [red_on_green]) - _image_embeddings(
        gated, builder, [green_on_red]
    )
    assert swapped.abs().max() > 0.1
    # positions count from each packed sample's own text, not from the row's start
    packed = _image_embeddings(gated, builder, [other, red_on_green])
    torch.testing.assert_close(
        packed[-4:], _image_embeddings(gated, builder, [red_on_green]), rtol=1e-3, atol=1e-3
    )


def test_text_order_counts_positions_per_sample():
    from fmmm.models.multimodal import _text_order

    text = torch.tensor([[1, 1, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    sample = torch.tensor([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 0, 0, 0]])
    keys = torch.arange(2)[:, None] * 3 + sample
    expected = torch.tensor([[0, 1, 0, 0, 1, 2, 0], [0, 0, 1, 0, 0, 0, 0]])
    assert torch.equal(_text_order(text, keys, 6), expected)


def test_conv_film_model_reloads_and_older_configs_load_without_position_embedding(
    builder, tmp_path
):
    import json

    batch = builder.build([_vla(builder, 5)], context_length=64)
    model = _model(builder, vision_tower="conv", vision_film=True)
    model.save_pretrained(tmp_path / "conv")
    loaded = MultimodalModel.from_pretrained(tmp_path / "conv").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["logits"], model(batch)["logits"], rtol=0, atol=0)
    # a model saved before image position embeddings existed has no image_pos_embed key
    old = _model(builder, image_pos_embed=False)
    old.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    raw = json.loads(config_file.read_text())
    del raw["image_pos_embed"]
    config_file.write_text(json.dumps(raw))
    reloaded = MultimodalModel.from_pretrained(tmp_path / "old").eval()
    assert reloaded.config.image_pos_embed is False
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch)["logits"], old(batch)["logits"], rtol=0, atol=0)
