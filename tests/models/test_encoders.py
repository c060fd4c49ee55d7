"""Standalone modality encoders and pretrained vision towers (random init, nothing downloaded)."""

import pytest
import torch

from fmmm.models.encoders import (
    ActionEmbedding,
    PatchEmbedding,
    PooledProjection,
    StateEmbedding,
    TextEmbedding,
    VisionTower,
)
from fmmm.tokenizers import ImageTokenizer


def test_each_encoder_maps_tokenizer_output_to_backbone_width():
    assert TextEmbedding(100, 32)(torch.randint(0, 100, (2, 5))).shape == (2, 5, 32)
    assert PatchEmbedding(192, 32)(torch.randn(2, 16, 192)).shape == (2, 16, 32)
    assert ActionEmbedding(256, 7, 32)(torch.randint(0, 256, (2, 4, 7))).shape == (2, 4, 7, 32)
    assert StateEmbedding(9, 32)(torch.randn(2, 9)).shape == (2, 32)


def test_action_embedding_distinguishes_dimensions_with_equal_bins():
    emb = ActionEmbedding(16, 3, 8)(torch.full((1, 3), 5))
    assert not torch.allclose(emb[0, 0], emb[0, 1])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: PatchEmbedding(192, 32)(torch.randn(2, 10)), "192 features"),
        (lambda: ActionEmbedding(16, 3, 8)(torch.full((1, 3), 16)), r"\[0, 16\)"),
        (lambda: StateEmbedding(9, 8)(torch.randn(3)), r"\(\.\.\., 9\)"),
        (
            lambda: PooledProjection(8, 4)(
                torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool)
            ),
            "valid token",
        ),
        (lambda: VisionTower("hub:vit", 8, 32, 16), "timm:<name>"),
    ],
)
def test_bad_encoder_input_raises_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_pooled_projection_ignores_masked_tokens_and_is_unit_norm():
    head = PooledProjection(8, 4)
    tokens = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 3 + [False] * 2] * 2)
    changed = tokens.clone()
    changed[:, 3:] = 100.0
    torch.testing.assert_close(head(tokens, mask), head(changed, mask))
    torch.testing.assert_close(head(tokens, mask).norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize(
    "name, image_size, patch",
    [("timm:vit_tiny_patch16_224", 32, 16), ("open_clip:ViT-B-32", 224, 32)],
)
def test_vision_tower_by_name_encodes_tokenizer_patches(name, image_size, patch):
    torch.manual_seed(0)
    tower = VisionTower(name, dim=24, image_size=image_size, patch_size=patch).eval()
    patches, _ = ImageTokenizer(image_size, patch).encode(
        torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    )
    with torch.no_grad():
        out = tower(patches.reshape(-1, patches.shape[-1]))
    assert out.shape == (2 * (image_size // patch) ** 2, 24) and torch.isfinite(out).all()


def test_vision_tower_patch_size_mismatch_raises():
    with pytest.raises(ValueError, match="patch size"):
        VisionTower("timm:vit_tiny_patch16_224", 8, 32, 8)
