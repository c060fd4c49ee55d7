"""fmmm.encoders.load: the README's three-line reuse snippet, on a saved debug model."""

import subprocess
import sys
import textwrap

import pytest
import torch

import fmmm.encoders
from fmmm.models.backbone import preset
from fmmm.models.multimodal import MultimodalConfig, MultimodalModel
from fmmm.tokenizers import ImageTokenizer, default_text_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    text = default_text_tokenizer(512)
    config = MultimodalConfig(
        backbone=preset("debug"),
        text_vocab_size=text.vocab_size,
        image_size=32,
        patch_size=8,
        embed_dim=16,
    )
    directory = tmp_path_factory.mktemp("model")
    MultimodalModel(config).save_pretrained(
        directory, tokenizers={"text": text, "image": ImageTokenizer(32, 8)}
    )
    return directory


def test_readme_snippet_runs_and_gives_unit_embeddings(saved):
    snippet = textwrap.dedent(
        f"""
        import torch
        images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)

        import fmmm.encoders
        encoder = fmmm.encoders.load({str(saved)!r}, modality="image")
        embeddings = encoder(images)

        assert embeddings.shape == (2, 16), embeddings.shape
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
        """
    )
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_loaded_encoder_matches_the_saved_model_and_is_deterministic(saved):
    encoder = fmmm.encoders.load(saved, modality="text")
    first = encoder(["a red cube", "the gripper opens"])
    again = fmmm.encoders.load(saved, modality="text")(["a red cube", "the gripper opens"])
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    hidden, mask = encoder.tokens(["a red cube"])
    assert hidden.shape[:2] == mask.shape and mask.any()
    assert not torch.allclose(first[0], first[1])


def test_missing_tokenizer_raises_clear_error(saved):
    with pytest.raises(ValueError, match="no audio tokenizer was saved"):
        fmmm.encoders.load(saved, modality="audio")
    with pytest.raises(ValueError, match="modality must be one of"):
        fmmm.encoders.load(saved, modality="smell")
