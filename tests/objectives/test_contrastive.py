import math

import pytest
import torch
import torch.nn.functional as F

from fmmm.objectives.contrastive import ContrastiveLoss


def embeddings(n=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    b = F.normalize(a + 0.5 * torch.randn(n, dim, generator=g), dim=-1)
    return a, b


def test_infonce_is_symmetric_clip_cross_entropy_with_temperature_init_and_clamp():
    loss = ContrastiveLoss("infonce")
    assert loss.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    a, b = embeddings()
    logits = (1 / 0.07) * a @ b.T
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert loss(a, b)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)  # e^10 >> 100: clamped as CLIP does
    assert loss(a, b)["logit_scale"].item() == pytest.approx(100.0)


def test_siglip_is_mean_over_rows_of_pairwise_sigmoid_losses():
    loss = ContrastiveLoss("siglip")
    a, b = embeddings()
    logits = 10.0 * a @ b.T - 10.0
    signs = 2 * torch.eye(6) - 1
    expected = -F.logsigmoid(signs * logits).sum() / 6
    assert loss(a, b)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.no_weight_decay() == {"logit_scale", "logit_bias"}


def test_matched_pairs_score_lower_loss_than_shuffled_pairs():
    for kind in ("infonce", "siglip"):
        loss = ContrastiveLoss(kind)
        a, b = embeddings(n=16)
        assert loss(a, b)["loss"] < loss(a, b.roll(1, dims=0))["loss"]
        assert loss(a, b)["accuracy"] > 0.5


def test_bad_inputs_raise_and_tiny_batches_give_no_loss():
    loss = ContrastiveLoss()
    with pytest.raises(ValueError, match="must both be"):
        loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full((3, 4), float("nan")), torch.zeros(3, 4))
    assert loss(*embeddings(n=1)) is None
    with pytest.raises(ValueError, match="kind"):
        ContrastiveLoss("triplet")
