import pytest
import torch

from fmmm.tokenizers.image import ImageTokenizer, VideoTokenizer


def _images(batch=2, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def test_image_patches_shapes_dtypes_and_row_col_positions():
    tokenizer = ImageTokenizer(image_size=32, patch_size=8)
    patches, positions = tokenizer.encode(_images())
    assert patches.shape == (2, 16, 3 * 8 * 8) and patches.dtype == torch.float32
    assert positions.shape == (2, 16, 2) and positions.dtype == torch.long
    assert positions[0, :5].tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]]
    assert positions[1, -1].tolist() == [3, 3]


def test_image_patches_reassemble_the_image_exactly():
    tokenizer = ImageTokenizer(image_size=32, patch_size=8)
    images = _images()
    pixels = tokenizer.preprocess(images)
    assert torch.equal(tokenizer.unpatchify(tokenizer.patchify(pixels)), pixels)
    decoded = tokenizer.decode(tokenizer.encode(images)[0])
    assert torch.allclose(decoded, images.float() / 255, atol=1e-6)


def test_patch_holds_the_pixels_of_its_grid_cell():
    tokenizer = ImageTokenizer(image_size=16, patch_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    images = torch.rand(1, 3, 16, 16)
    patches, _ = tokenizer.encode(images)
    cell = images[0, :, 8:16, 0:8]  # row 1, col 0 -> patch index 2
    assert torch.equal(patches[0, 2], cell.reshape(-1))


def test_resize_accepts_any_size_and_float_input():
    tokenizer = ImageTokenizer(image_size=32, patch_size=8)
    patches, _ = tokenizer.encode(torch.rand(1, 3, 50, 70))
    assert patches.shape == (1, 16, 192)


def test_same_image_same_patches():
    tokenizer = ImageTokenizer(32, 8)
    assert torch.equal(tokenizer.encode(_images())[0], tokenizer.encode(_images())[0])


def test_image_save_then_load_gives_identical_output(tmp_path):
    tokenizer = ImageTokenizer(32, 4, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    tokenizer.save(tmp_path)
    loaded = ImageTokenizer.load(tmp_path)
    assert torch.equal(loaded.encode(_images())[0], tokenizer.encode(_images())[0])


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(3, 32, 32, dtype=torch.uint8), "shape"),
        (torch.zeros(1, 32, 32, 3, dtype=torch.uint8), "shape"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.int32), "dtype"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.full((1, 3, 32, 32), 2.0), r"\[0, 1\]"),
        (torch.zeros(1, 3, 4, 32, dtype=torch.uint8), "smaller than one 8x8 patch"),
    ],
)
def test_bad_image_input_raises_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        ImageTokenizer(32, 8).encode(bad)


def test_image_size_must_be_a_multiple_of_patch_size():
    with pytest.raises(ValueError, match="multiple"):
        ImageTokenizer(30, 8)


def test_video_tubelets_shapes_positions_and_exact_reassembly():
    tokenizer = VideoTokenizer(image_size=16, patch_size=8, tubelet=2)
    videos = torch.rand(2, 4, 3, 16, 16)
    patches, positions = tokenizer.encode(videos)
    assert patches.shape == (2, 2 * 4, 2 * 3 * 8 * 8) and patches.dtype == torch.float32
    assert positions.shape == (2, 8, 3) and positions.dtype == torch.long
    assert positions[0, :5].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert torch.allclose(tokenizer.decode(patches), videos, atol=1e-6)


def test_video_tubelet_holds_consecutive_frames_of_one_cell():
    tokenizer = VideoTokenizer(16, 8, 2, mean=(0, 0, 0), std=(1, 1, 1))
    videos = torch.rand(1, 4, 3, 16, 16)
    patches, _ = tokenizer.encode(videos)
    tube = videos[0, 2:4, :, 0:8, 8:16]  # time 1, row 0, col 1 -> index 4 + 1
    assert torch.equal(patches[0, 5], tube.reshape(-1))


def test_video_save_load_and_bad_length(tmp_path):
    tokenizer = VideoTokenizer(16, 8, 2)
    tokenizer.save(tmp_path)
    videos = torch.rand(1, 2, 3, 16, 16)
    assert torch.equal(VideoTokenizer.load(tmp_path).encode(videos)[0], tokenizer.encode(videos)[0])
    with pytest.raises(ValueError, match="multiple of tubelet"):
        tokenizer.encode(torch.rand(1, 3, 3, 16, 16))
