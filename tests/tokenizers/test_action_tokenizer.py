import numpy as np
import pytest
import torch

from fmmm.tokenizers.action import ActionTokenizer, StateNormalizer


def _actions(n=2000, dims=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dims, generator=generator) * torch.tensor([1.0, 0.1, 5.0, 2.0][:dims])


def test_action_round_trip_within_half_a_bin():
    actions = _actions()
    tokenizer = ActionTokenizer(num_bins=256).fit(actions)
    tokens = tokenizer.encode(actions)
    assert tokens.dtype == torch.long and tokens.shape == actions.shape
    assert tokens.min() >= 0 and tokens.max() < 256
    inside = (actions >= tokenizer.low) & (actions <= tokenizer.high)
    half_bin = (tokenizer.high - tokenizer.low) / 256 / 2
    error = (tokenizer.decode(tokens) - actions).abs()
    assert (error <= half_bin + 1e-6)[inside].all()


def test_range_is_fit_from_1st_to_99th_percentile_and_outliers_clip():
    actions = _actions(dims=1)
    tokenizer = ActionTokenizer().fit(actions)
    assert torch.allclose(tokenizer.low.float(), torch.quantile(actions, 0.01, dim=0))
    assert torch.allclose(tokenizer.high.float(), torch.quantile(actions, 0.99, dim=0))
    extremes = tokenizer.encode(torch.tensor([[-1e6], [1e6]]))
    assert extremes[:, 0].tolist() == [0, 255]


def test_decode_returns_bin_centres():
    tokenizer = ActionTokenizer(num_bins=4).fit(torch.tensor([[0.0], [4.0]]).repeat(50, 1))
    tokenizer.low, tokenizer.high = torch.tensor([0.0]).double(), torch.tensor([4.0]).double()
    assert tokenizer.decode(torch.arange(4)[:, None])[:, 0].tolist() == [0.5, 1.5, 2.5, 3.5]


def test_constant_dimension_encodes_to_middle_and_decodes_to_constant():
    actions = torch.cat([_actions(dims=2), torch.full((2000, 1), 0.7)], dim=1)
    tokenizer = ActionTokenizer().fit(actions)
    tokens = tokenizer.encode(actions)
    assert (tokens[:, 2] == 128).all()
    assert torch.allclose(tokenizer.decode(tokens)[:, 2], torch.tensor(0.7))


def test_mu_law_gives_finer_bins_near_zero_and_round_trips_within_half_a_bin():
    actions = _actions(dims=1)
    linear, mu_law = ActionTokenizer().fit(actions), ActionTokenizer(mu=100).fit(actions)
    small = torch.tensor([[0.0], [0.01]]) + (linear.low + linear.high).float() / 2
    assert len(set(mu_law.encode(small)[:, 0].tolist())) == 2
    assert len(set(linear.encode(small)[:, 0].tolist())) == 1
    # half a bin in the companded space
    tokens = mu_law.encode(actions)
    unit = (actions.double() - mu_law.low) / (mu_law.high - mu_law.low) * 2 - 1
    decoded = (mu_law.decode(tokens).double() - mu_law.low) / (mu_law.high - mu_law.low) * 2 - 1
    inside = unit.abs() <= 1
    error = (mu_law._compand(decoded) - mu_law._compand(unit)).abs()
    assert (error <= mu_law.bin_width / 2 + 1e-6)[inside].all()


def test_action_tokenizer_accepts_numpy_and_batched_chunks():
    tokenizer = ActionTokenizer().fit(np.random.default_rng(0).normal(size=(500, 7)))
    chunk = torch.zeros(3, 5, 7)
    assert tokenizer.encode(chunk).shape == (3, 5, 7)
    assert tokenizer.decode(tokenizer.encode(chunk)).dtype == torch.float32


def test_action_save_then_load_gives_identical_tokens(tmp_path):
    actions = _actions()
    tokenizer = ActionTokenizer(num_bins=64, mu=50.0).fit(actions)
    tokenizer.save(tmp_path)
    loaded = ActionTokenizer.load(tmp_path)
    assert torch.equal(loaded.encode(actions), tokenizer.encode(actions))
    assert torch.equal(
        loaded.decode(tokenizer.encode(actions)), tokenizer.decode(tokenizer.encode(actions))
    )
    assert loaded.num_bins == 64 and loaded.mu == 50.0


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.tensor([[float("nan"), 0, 0, 0]]), "NaN"),
        (torch.tensor([[float("inf"), 0, 0, 0]]), "NaN or inf"),
        (torch.zeros(2, 3), "last dimension must be 4"),
        (torch.zeros(2, 4, dtype=torch.long), "dtype"),
        (torch.zeros(0, 4), "empty"),
    ],
)
def test_bad_action_input_raises_value_error(bad, message):
    tokenizer = ActionTokenizer().fit(_actions())
    with pytest.raises(ValueError, match=message):
        tokenizer.encode(bad)


def test_unfitted_tokenizer_and_bad_tokens_raise_value_error():
    with pytest.raises(ValueError, match="not fitted"):
        ActionTokenizer().encode(torch.zeros(1, 4))
    tokenizer = ActionTokenizer(num_bins=8).fit(_actions())
    with pytest.raises(ValueError, match="lie in"):
        tokenizer.decode(torch.full((1, 4), 8))
    with pytest.raises(ValueError, match="integer"):
        tokenizer.decode(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        ActionTokenizer().fit(torch.zeros(2, 3, 4))


def test_state_normalizer_standardizes_inverts_and_saves(tmp_path):
    states = _actions(dims=3) + torch.tensor([10.0, -3.0, 0.5])
    states = torch.cat([states, torch.full((2000, 1), 2.0)], dim=1)
    normalizer = StateNormalizer().fit(states)
    normalized = normalizer.normalize(states)
    assert torch.allclose(normalized[:, :3].mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(normalized[:, :3].std(0, correction=0), torch.ones(3), atol=1e-4)
    assert (normalized[:, 3] == 0).all()
    assert torch.allclose(normalizer.unnormalize(normalized), states, atol=1e-5)
    normalizer.save(tmp_path)
    assert torch.equal(StateNormalizer.load(tmp_path).normalize(states), normalized)
    with pytest.raises(ValueError, match="NaN"):
        normalizer.normalize(torch.full((4,), float("nan")))
