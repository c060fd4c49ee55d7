import math

import pytest
import torch

from fmmm.objectives.dpo import DPOLoss, dpo_loss, sequence_logprobs


def test_dpo_loss_matches_rafailov_formula_on_hand_computed_values():
    # beta * ((-1 - -1.5) - (-2 - -1.5)) = 0.5 * (0.5 + 0.5) = 0.5; loss = log(1 + e^-0.5)
    out = dpo_loss(
        torch.tensor([-1.0, -3.0]),
        torch.tensor([-2.0, -1.0]),
        torch.tensor([-1.5, -2.0]),
        torch.tensor([-1.5, -2.0]),
        beta=0.5,
    )
    # second pair: 0.5 * ((-3 + 2) - (-1 + 2)) = -1.0; loss = log(1 + e^1)
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2
    assert out["loss"].item() == pytest.approx(expected, abs=1e-6)
    assert out["reward_accuracy"].item() == pytest.approx(0.5)
    assert out["reward_margin"].item() == pytest.approx((0.5 - 1.0) / 2)
    assert out["chosen_reward"].item() == pytest.approx((0.25 + -0.5) / 2)


def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-4.0, -7.0, -1.0])
    out = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert out["loss"].item() == pytest.approx(math.log(2), abs=1e-7)


def test_dpo_gradient_raises_chosen_and_lowers_rejected_logprob():
    chosen = torch.tensor([-2.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    out = dpo_loss(chosen, rejected, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=1.0)
    out["loss"].backward()
    # d/dx -log sigmoid(x) at x = 0 is -0.5, times beta = 1
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)


def test_sequence_logprobs_sums_target_logprobs_and_skips_ignored_positions():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]]))
    targets = torch.tensor([[0, 1, -100]])
    got = sequence_logprobs(logits, targets)
    assert got.item() == pytest.approx(math.log(0.5) + math.log(0.6), abs=1e-6)


def test_dpo_module_uses_chosen_then_rejected_rows_and_reference_gets_no_grad():
    torch.manual_seed(0)
    policy_logits = torch.randn(4, 3, 5, requires_grad=True)
    reference_logits = torch.randn(4, 3, 5, requires_grad=True)
    targets = torch.tensor([[1, 2, -100], [0, 4, 3], [2, -100, -100], [1, 1, 1]])
    out = DPOLoss(beta=0.2)(policy_logits, reference_logits, targets)
    pol = sequence_logprobs(policy_logits, targets)
    ref = sequence_logprobs(reference_logits, targets)
    expected = dpo_loss(pol[:2], pol[2:], ref[:2], ref[2:], 0.2)["loss"]
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    out["loss"].backward()
    assert reference_logits.grad is None
    assert policy_logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), 0.1), "same shape"),
        ((torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.0), "beta"),
    ],
)
def test_dpo_loss_rejects_bad_input_with_one_line_error(args, message):
    with pytest.raises(ValueError, match=message):
        dpo_loss(*args)


def test_dpo_module_rejects_odd_batch():
    with pytest.raises(ValueError, match="chosen then rejected"):
        DPOLoss()(torch.zeros(3, 2, 4), torch.zeros(3, 2, 4), torch.zeros(3, 2, dtype=torch.long))
