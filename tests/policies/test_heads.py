"""The continuous action heads (l1, flow): files, batching, losses and feature checks."""

import numpy as np
import pytest
import torch

from fmmm.policies.heads import sample_flow_time, timestep_features
from fmmm.policies.vla import VLA, VLAPolicy
from tests.policies.test_vla import make_vla, observation


@pytest.mark.parametrize("head", ["l1", "flow"])
def test_continuous_heads_save_load_and_give_the_same_actions(tmp_path, head):
    vla = make_vla(cameras=["agentview", "wrist"], head=head, chunk=4, flow_steps=3)
    vla.features = {"observation.state": [f"s{i}" for i in range(16)], "action": None}
    vla.generator.manual_seed(5)
    before = vla.predict_chunk(observation())
    assert before.shape == (4, 7) and np.all(np.abs(before) <= 1)
    vla.save(tmp_path)
    assert (tmp_path / "action_head.safetensors").is_file()
    loaded = VLA.load(tmp_path)
    loaded.generator.manual_seed(5)
    np.testing.assert_array_equal(loaded.predict_chunk(observation()), before)
    assert loaded.features == vla.features
    (tmp_path / "action_head.safetensors").unlink()
    with pytest.raises(ValueError, match="action_head.safetensors is missing"):
        VLA.load(tmp_path)


@pytest.mark.parametrize("head", ["l1", "flow"])
def test_batched_chunks_equal_one_observation_at_a_time(head):
    vla = make_vla(cameras=["agentview"], head=head, chunk=3, flow_steps=2)
    observations = [observation(0, "reach the red cube"), observation(1, "open the drawer now")]
    noise = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1))
    kwargs = [{"noise": noise[i : i + 1]} if head == "flow" else {} for i in range(2)]
    both = vla.predict_chunks(observations, **({"noise": noise} if head == "flow" else {}))
    one = [vla.predict_chunks([o], **k)[0] for o, k in zip(observations, kwargs)]
    np.testing.assert_allclose(both, np.stack(one), atol=1e-5)


def test_tokens_head_decodes_a_batch_of_different_lengths_as_one_by_one():
    vla = make_vla(cameras=["agentview"], chunk=2)
    observations = [observation(0, "reach the red cube"), observation(1, "open the top drawer now")]
    np.testing.assert_array_equal(
        vla.predict_chunks(observations), np.stack([vla.predict_chunk(o) for o in observations])
    )


def test_l1_loss_is_the_mean_absolute_error_over_unmasked_actions():
    from fmmm.policies.vla import ActionBatch

    vla = make_vla(cameras=["agentview"], head="l1", chunk=2)
    samples = [vla.prefix_segments(observation(s)) for s in (0, 1)]
    tokens = vla.training_batch(samples, torch.zeros(2, 14, dtype=torch.long), None)
    target = torch.rand(2, 2, 7) * 2 - 1
    mask = torch.tensor([[True, True], [True, False]])
    loss, info = vla(ActionBatch(tokens, target, mask))
    predicted, _ = vla._head_outputs(tokens)
    expected = (predicted - target).abs()[mask].mean()
    assert torch.allclose(info["l1"], expected, atol=1e-6)
    # a masked action has no gradient
    target_b = target.clone()
    target_b[1, 1] += 5.0
    _, info_b = vla(ActionBatch(tokens, target_b, mask))
    assert torch.allclose(info["l1"], info_b["l1"])


def test_flow_time_and_features():
    t = sample_flow_time(10_000, torch.Generator().manual_seed(0))
    assert float(t.min()) > 0.001 - 1e-7 and float(t.max()) <= 1.0
    assert abs(float(t.mean()) - (0.999 * 0.6 + 0.001)) < 0.01  # Beta(1.5, 1) has mean 0.6
    features = timestep_features(torch.tensor([0.0, 0.5, 1.0]), 16)
    assert features.shape == (3, 16) and not torch.allclose(features[0], features[1])


def test_policy_batches_queues_per_env_and_counts_forward_passes():
    vla = make_vla(cameras=["agentview"], head="l1", chunk=4, execute=2)
    policy = VLAPolicy(vla)
    calls = []
    predict = vla.predict_chunks
    vla.predict_chunks = lambda obs, noise=None: calls.append(len(obs)) or predict(obs, noise)
    first = policy.act_batch([observation(0), observation(1)])
    assert first.shape == (2, 7) and calls == [2]
    policy.act_batch([observation(0), observation(1)])
    assert calls == [2]  # second action of each chunk comes from the queues
    policy.reset_index(1)
    policy.act_batch([observation(0), observation(1)])
    assert calls == [2, 2]  # env 0's queue ran out too
    policy.reset_index(1)
    policy.act_batch([observation(0), observation(1)])
    assert calls == [2, 2, 1]
    assert policy.chunk == 4 and policy.forward_passes_per_action == 0.5
    assert VLAPolicy(make_vla(chunk=2)).forward_passes_per_action == 7  # 14 tokens, 2 actions


def test_policy_refuses_an_env_whose_state_is_named_differently(tmp_path):
    vla = make_vla(cameras=["agentview"], head="l1")
    names = [f"s{i}" for i in range(16)]
    vla.features = {"observation.state": names, "action": None}
    vla.save(tmp_path)
    from fmmm.policies.factory import load_policy

    factory = load_policy(str(tmp_path))

    class Env:
        feature_names = {"observation.state": names[::-1]}

    with pytest.raises(ValueError, match="observation.state is .* but the policy was trained on"):
        factory(Env())
    Env.feature_names = {"observation.state": names}
    assert isinstance(factory(Env()), VLAPolicy)


@pytest.mark.parametrize("rows", [1, 2])
def test_flow_with_the_prefix_cache_equals_full_recomputation(rows):
    # one row: no padding (no attention mask); two rows of different lengths: padded prefixes
    vla = make_vla(cameras=["agentview", "wrist"], head="flow", chunk=3, flow_steps=4)
    observations = [observation(0, "reach the red cube"), observation(1, "open the top drawer")]
    noise = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(2))[:rows]
    cached = vla.predict_chunks(observations[:rows], noise)
    vla.config.use_cache = False
    np.testing.assert_allclose(vla.predict_chunks(observations[:rows], noise), cached, atol=1e-5)


def test_flow_with_the_prefix_cache_runs_unmerged_lora_adapters():
    from fmmm.policies.lora import LoRAConfig, add_lora

    vla = make_vla(cameras=["agentview"], head="flow", chunk=3, flow_steps=3)
    vla.model = add_lora(vla.model, LoRAConfig(rank=4, alpha=8))
    with torch.no_grad():
        for name, param in vla.model.named_parameters():
            if "lora_B" in name:  # LoRA starts as the identity; make the adapters count
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    noise = torch.randn(1, 3, 7, generator=torch.Generator().manual_seed(2))
    cached = vla.predict_chunks([observation(0)], noise)
    vla.config.use_cache = False
    np.testing.assert_allclose(vla.predict_chunks([observation(0)], noise), cached, atol=1e-5)


@pytest.mark.slow
def test_compiled_flow_steps_give_the_eager_actions():
    vla = make_vla(cameras=["agentview"], head="flow", chunk=2, flow_steps=2)
    noise = torch.randn(1, 2, 7, generator=torch.Generator().manual_seed(2))
    eager = vla.predict_chunks([observation(0)], noise)
    vla.config.flow_compile = True
    np.testing.assert_allclose(vla.predict_chunks([observation(0)], noise), eager, atol=1e-5)
