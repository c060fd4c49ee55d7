"""Standalone modality encoders and pretrained vision towers (random init, nothing downloaded)."""

import pytest
import torch

from fmmm.models.embeddings import (
    ConvStem,
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
    assert StateEmbedding(9, 32)(torch.randn(2, 9)).shape == (2, 32)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: PatchEmbedding(192, 32)(torch.randn(2, 10)), "192 features"),
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


def test_patch_embedding_position_embedding_tells_grid_cells_apart():
    torch.manual_seed(0)
    patches = torch.randn(1, 12).repeat(8, 1)  # two images of four identical patches
    plain = PatchEmbedding(12, 8)(patches)
    torch.testing.assert_close(plain[0], plain[1])
    out = PatchEmbedding(12, 8, grid_tokens=4)(patches)
    torch.testing.assert_close(out[0], out[4])  # same cell, next image
    assert not torch.allclose(out[0], out[1])  # next cell, same patch
    with pytest.raises(ValueError, match=r"n_images \* 4"):
        PatchEmbedding(12, 8, grid_tokens=4)(patches[:6])


def _stem_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(n, 3, S, S) float images -> tokenizer-layout patches (n * N, 3*p*p)."""
    n, _, size, _ = images.shape
    grid = size // patch
    cells = images.reshape(n, 3, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(n * grid * grid, 3 * patch * patch)


def test_conv_stem_token_changes_only_near_what_changed_in_the_image():
    torch.manual_seed(0)
    stem = ConvStem(dim=16, image_size=16, patch_size=4).eval()
    blank = torch.zeros(1, 3, 16, 16)
    blob = blank.clone()
    blob[:, 0, 0:3, 0:3] = 3.0  # a red object in the top-left cell
    with torch.no_grad():
        diff = (stem(_stem_patches(blob, 4)) - stem(_stem_patches(blank, 4))).abs().sum(-1)
    assert diff.shape == (16,) and diff.argmax() == 0
    assert diff[15] == 0  # the bottom-right cell's receptive field does not reach the object


def test_conv_stem_film_is_identity_at_init_and_conditions_once_trained():
    torch.manual_seed(0)
    stem = ConvStem(dim=8, image_size=8, patch_size=2, film=True).eval()
    patches = _stem_patches(torch.randn(2, 3, 8, 8), 2)
    red, blue = torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(stem(patches, red), stem(patches))
        for layer in stem.film:
            layer.weight.normal_()
        assert not torch.allclose(stem(patches, red), stem(patches, blue))
    with pytest.raises(ValueError, match="n_images=2"):
        stem(patches, red[:1])
    with pytest.raises(ValueError, match="film is off"):
        ConvStem(dim=8, image_size=8, patch_size=2)(patches, red)
    with pytest.raises(ValueError, match="power-of-two"):
        ConvStem(dim=8, image_size=12, patch_size=6)
