import pytest
import torch
import torch.nn.functional as F

from fmmm.objectives.autoregressive import NextTokenLoss
from fmmm.objectives.masked import MaskedPatchLoss, mask_patches
from fmmm.tokenizers.sequence import MultimodalBatch


def test_next_token_loss_is_mean_cross_entropy_over_targets_split_by_modality():
    logits = torch.randn(2, 5, 12)
    targets = torch.tensor([[1, 2, -100, 10, 11], [3, -100, -100, -100, 4]])
    out = NextTokenLoss(action_offset=10)(logits, targets)
    valid = targets != -100
    assert out["loss"].item() == pytest.approx(
        F.cross_entropy(logits[valid], targets[valid]).item()
    )
    text = valid & (targets < 10)
    assert out["text_loss"].item() == pytest.approx(
        F.cross_entropy(logits[text], targets[text]).item()
    )
    assert "action_loss" in out
    with pytest.raises(ValueError, match="no target tokens"):
        NextTokenLoss()(logits, torch.full((2, 5), -100))


def make_batch(n_image=10, width=12):
    features = {"image": torch.randn(n_image, width)}
    zeros = torch.zeros(1, 12, dtype=torch.long)
    return MultimodalBatch(
        zeros, zeros, torch.zeros(1, 12, 3, dtype=torch.long), zeros + 1,
        torch.ones(1, 12, dtype=torch.bool), torch.ones(1, 12, 12, dtype=torch.bool),
        zeros - 100, features,
    )  # fmt: skip


def test_mask_patches_hides_the_requested_share_and_keeps_originals():
    batch = make_batch()
    generator = torch.Generator().manual_seed(0)
    masked_batch, masked, original = mask_patches(batch, "image", 0.3, generator)
    assert int(masked.sum()) == 3
    assert torch.equal(original, batch.features["image"])
    assert (masked_batch.features["image"][masked] == 0).all()
    assert torch.equal(masked_batch.features["image"][~masked], original[~masked])
    with pytest.raises(ValueError, match="no 'audio' features"):
        mask_patches(batch, "audio", 0.5)


def test_masked_patch_loss_trains_its_decoder_towards_the_targets():
    torch.manual_seed(0)
    hidden, targets = torch.randn(64, 16), torch.randn(64, 12)
    loss = MaskedPatchLoss(16, 12, normalize_targets=False)
    targets = hidden[:, :12] * 2  # learnable linear map
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
    first = loss(hidden, targets)["loss"].item()
    for _ in range(100):
        optimizer.zero_grad()
        loss(hidden, targets)["loss"].backward()
        optimizer.step()
    assert loss(hidden, targets)["loss"].item() < 0.05 * first
