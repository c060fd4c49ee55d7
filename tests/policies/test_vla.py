import numpy as np
import pytest
import torch

from fmmm.models.backbone import preset
from fmmm.models.factory import create_model_and_builder
from fmmm.models.multimodal import MultimodalConfig
from fmmm.policies.lora import LoRAConfig, add_lora, count_parameters
from fmmm.policies.vla import VLA, VLAConfig, VLAPolicy, load_vla
from fmmm.tokenizers.action import ActionTokenizer, StateNormalizer
from fmmm.tokenizers.sequence import Modality
from fmmm.tokenizers.text import default_text_tokenizer

STATE_DIM = 16


def make_vla(
    dim: int = 64, layers: int = 2, text_vocab_size: int = 512, action_dim: int = 7, **policy
) -> VLA:
    torch.manual_seed(0)
    text = default_text_tokenizer(512)
    config = MultimodalConfig(
        backbone=preset(
            "debug", dim=dim, n_layers=layers, n_heads=4, n_kv_heads=4, ffn_hidden=2 * dim
        ),
        text_vocab_size=text_vocab_size,
        action_bins=32,
        image_size=16,
        patch_size=8,
        state_dim=STATE_DIM,
    )
    generator = torch.Generator().manual_seed(0)
    actions = torch.rand(200, action_dim, generator=generator) * 2 - 1
    states = torch.randn(200, STATE_DIM, generator=generator)
    model, builder = create_model_and_builder(
        config,
        {
            "text": text,
            "action": ActionTokenizer(32).fit(actions),
            "state": StateNormalizer().fit(states),
        },
    )
    vla = VLA(model, builder, VLAConfig(**policy))
    return vla.eval()


def observation(seed: int = 0, instruction: str = "reach the red cube") -> dict:
    rng = np.random.default_rng(seed)
    return {
        "agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "state": rng.normal(size=STATE_DIM).astype(np.float32),
        "instruction": instruction,
    }


def test_kv_cache_decoding_gives_the_same_actions_as_full_recompute():
    vla = make_vla(chunk=3, cameras=["agentview", "wrist"])
    for seed in range(3):
        cached = vla.predict_chunk(observation(seed), use_cache=True)
        full = vla.predict_chunk(observation(seed), use_cache=False)
        assert cached.shape == (3, 7) and cached.dtype == np.float32
        np.testing.assert_array_equal(cached, full)
        assert np.all(np.abs(cached) <= 1)


def test_action_width_follows_the_fitted_action_tokenizer():
    vla = make_vla(action_dim=4, chunk=3)  # Meta-World's (dx, dy, dz, gripper)
    chunk = vla.predict_chunk(observation())
    assert chunk.shape == (3, 4) and np.all(np.abs(chunk) <= 1)
    prefix = vla.prefix_segments(observation())
    ids = torch.zeros(1, 3 * 4, dtype=torch.long)
    batch = vla.training_batch([prefix], ids, torch.ones(1, 3 * 4, dtype=torch.bool))
    assert int((batch.targets >= vla.action_offset).sum()) == 3 * 4
    loss, _ = vla.train()(batch)
    assert torch.isfinite(loss)


def test_policy_serves_actions_from_the_chunk_queue_and_reset_clears_it(monkeypatch):
    vla = make_vla(chunk=4, execute=2)
    calls = []
    original = vla.predict_chunk

    def counting(obs, use_cache=None):
        calls.append(1)
        return original(obs, use_cache)

    monkeypatch.setattr(vla, "predict_chunk", counting)
    policy = VLAPolicy(vla)
    policy.reset()
    first = [policy.act(observation()) for _ in range(5)]
    assert len(calls) == 3  # 2 actions per prediction: steps 0, 2, 4
    np.testing.assert_array_equal(first[0], original(observation())[0])
    np.testing.assert_array_equal(first[1], original(observation())[1])
    policy.reset()
    policy.act(observation())
    assert len(calls) == 4


def test_any_typed_instruction_is_accepted_and_changes_the_prefix():
    vla = make_vla()
    typed = observation(instruction="please touch the blue cylinder, then stop!")
    assert vla.predict_chunk(typed).shape == (4, 7)
    lengths = {
        sum(len(s) for s in vla.prefix_segments(observation(instruction=t)))
        for t in ("a", typed["instruction"])
    }
    assert len(lengths) == 2


def test_saved_policy_loads_through_the_eval_factory_with_identical_actions(tmp_path):
    vla = make_vla(cameras=["agentview", "wrist"])
    vla.save(tmp_path)
    from fmmm.policies.factory import load_policy

    policy = load_policy(str(tmp_path))(None)
    policy.reset()
    np.testing.assert_array_equal(policy.act(observation()), vla.predict_chunk(observation())[0])


def test_reloaded_vla_with_text_vocab_beyond_its_tokenizer_gives_the_same_actions(tmp_path):
    vla = make_vla(text_vocab_size=1024, chunk=3)
    assert vla.builder.action_offset == 1024 > vla.builder.text_tokenizer.vocab_size
    vla.save(tmp_path)
    loaded = VLA.load(tmp_path)
    assert loaded.action_offset == 1024
    for seed in range(3):
        np.testing.assert_array_equal(
            loaded.predict_chunk(observation(seed)), vla.predict_chunk(observation(seed))
        )


def test_policy_prefix_is_the_robot_layout_pretraining_uses():
    from fmmm.train.samples import SampleDecoder

    vla = make_vla(cameras=["agentview"], normalize_patches=False)
    obs = observation(1, "put the red cube on the plate")
    actions = np.zeros((2, 7), dtype=np.float32)
    sample = {"text": obs["instruction"], "image": obs["agentview"], "state": obs["state"],
              "actions": actions, "source": "s", "key": "k"}  # fmt: skip
    pretraining = SampleDecoder(vla.builder, 256).lm_sample(sample, "robot")
    policy = vla.prefix_segments(obs)
    layout = [(s.modality, s.prefix, len(s)) for s in pretraining]
    # the same segments up to the action marker; pretraining then appends the action tokens
    assert layout[: len(policy) - 1] == [(s.modality, s.prefix, len(s)) for s in policy[:-1]]
    assert pretraining[len(policy) - 1].ids.tolist() == policy[-1].ids.tolist()
    for mine, theirs in zip(policy[:-1], pretraining):
        if mine.ids is not None:
            assert mine.ids.tolist() == theirs.ids.tolist()
        else:
            torch.testing.assert_close(mine.features, theirs.features)


def test_lora_policy_trains_under_five_percent_saves_adapter_and_merge_matches(tmp_path):
    vla = make_vla(dim=128, layers=4)
    vla.model = add_lora(vla.model, LoRAConfig(rank=4, alpha=8))
    trainable, total = count_parameters(vla)
    assert trainable / total < 0.05
    with torch.no_grad():
        for name, param in vla.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    expected = vla.predict_chunk(observation())
    vla.save(tmp_path, adaptation="lora")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    unmerged = VLA.load(tmp_path, merge=False)
    merged = VLA.load(tmp_path, merge=True)
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    np.testing.assert_array_equal(unmerged.predict_chunk(observation()), expected)
    np.testing.assert_array_equal(merged.predict_chunk(observation()), expected)
    base = VLA.load(tmp_path, merge=False)
    with base.model.disable_adapter():
        assert not np.array_equal(base.predict_chunk(observation()), expected)


def test_training_loss_is_cross_entropy_over_action_bins_only():
    vla = make_vla(chunk=2)
    prefixes = [vla.prefix_segments(observation(i)) for i in range(3)]
    ids = torch.randint(0, 32, (3, 14))
    mask = torch.ones(3, 14, dtype=torch.bool)
    mask[2, 7:] = False
    batch = vla.training_batch(prefixes, ids, mask)
    assert int((batch.targets != -100).sum()) == 14 + 14 + 7
    loss, info = vla(batch)
    logits = vla.model(batch)["logits"]
    valid = batch.targets != -100
    expected = torch.nn.functional.cross_entropy(
        logits[valid][:, vla.action_offset :], batch.targets[valid] - vla.action_offset
    )
    torch.testing.assert_close(loss, expected)
    assert 0 <= info["action_accuracy"] <= 1


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(agentview=np.zeros((32, 32, 3), dtype=np.float32)), "uint8"),
        (dict(instruction=""), "instruction"),
        (dict(agentview=None), "agentview"),
    ],
)
def test_bad_observations_raise_one_line_errors(change, message):
    obs = {**observation(), **change}
    if change.get("agentview", 0) is None:
        del obs["agentview"]
    with pytest.raises(ValueError, match=message):
        make_vla().predict_chunk(obs)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(chunk=0), "chunk"), (dict(execute=5), "execute"), (dict(cameras=["top"]), "camera")],
)
def test_vla_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VLAConfig(**kwargs)


def test_vla_factory_needs_a_run_directory():
    with pytest.raises(ValueError, match="run directory"):
        load_vla(None, {})


def test_patch_normalizer_standardizes_and_round_trips_with_the_policy(tmp_path):
    from fmmm.policies.vla import PatchNormalizer

    generator = torch.Generator().manual_seed(0)
    patches = torch.rand(50, 4, 192, generator=generator)
    patches[:, :, :10] = 0.5  # constant pixels: spread raised to the floor
    normalizer = PatchNormalizer.fit({"agentview": patches}, floor=0.1)
    out = normalizer("agentview", patches[0])
    expected = (patches[0] - patches.mean(0)) / patches.std(0, correction=0).clamp_min(0.1)
    torch.testing.assert_close(out, expected)
    assert torch.equal(normalizer("wrist", patches[0]), patches[0])  # unfitted camera untouched
    with pytest.raises(ValueError, match="do not match"):
        normalizer("agentview", patches[0, :2])
    vla = make_vla()
    frames = torch.tensor(np.stack([observation(i)["agentview"] for i in range(8)])).permute(
        0, 3, 1, 2
    )
    vla.patch_normalizer = PatchNormalizer.fit(
        {"agentview": vla.builder.image_tokenizer.encode(frames)[0]}
    )
    vla.save(tmp_path)
    loaded = VLA.load(tmp_path)
    np.testing.assert_array_equal(
        loaded.predict_chunk(observation()), vla.predict_chunk(observation())
    )
    plain = make_vla()

    def image_features(policy: VLA) -> torch.Tensor:
        segments = policy.prefix_segments(observation(3))
        return next(s.features for s in segments if s.modality == Modality.IMAGE)

    normalized = image_features(loaded)
    assert not torch.allclose(image_features(plain), normalized)
    torch.testing.assert_close(normalized, image_features(vla))
    with torch.no_grad():
        batch = plain.builder.build([plain.prefix_segments(observation(3))], 64, pack=False)
        plain_logits = plain.model(batch)["logits"]
        batch = vla.builder.build([vla.prefix_segments(observation(3))], 64, pack=False)
        assert not torch.allclose(plain_logits, vla.model(batch)["logits"])


def test_training_noise_perturbs_features_only_in_training_mode():
    vla = make_vla(state_noise=0.5, patch_noise=0.5)
    prefixes = [vla.prefix_segments(observation(i)) for i in range(2)]
    batch = vla.training_batch(
        prefixes, torch.zeros(2, 28, dtype=torch.long), torch.ones(2, 28, dtype=torch.bool)
    )
    vla.eval()
    assert torch.equal(vla(batch)[0], vla(batch)[0])
    vla.train()
    torch.manual_seed(0)
    first = vla(batch)[0]
    torch.manual_seed(0)
    assert torch.equal(first, vla(batch)[0])  # seeded noise: same numbers
    assert not torch.equal(first, vla(batch)[0])
    assert torch.equal(
        batch.features["state"],
        vla.training_batch(
            prefixes, torch.zeros(2, 28, dtype=torch.long), torch.ones(2, 28, dtype=torch.bool)
        ).features["state"],
    )


def test_policy_options_change_one_load_of_a_saved_policy_and_unknown_ones_are_named(tmp_path):
    from fmmm.policies.factory import load_policy

    make_vla(head="flow", flow_steps=10).save(tmp_path)
    fewer = load_policy(str(tmp_path), {"flow_steps": 3})(None)
    assert fewer.vla.config.flow_steps == 3 and fewer.vla.forward_passes_per_chunk == 3
    assert load_policy(str(tmp_path))(None).vla.config.flow_steps == 10  # policy.json untouched
    with pytest.raises(ValueError, match="unknown keys flow_stepz") as error:
        load_policy(str(tmp_path), {"flow_stepz": 3})
    assert "--policy-option" in str(error.value) and "\n" not in str(error.value)
