import pytest
import torch

from fmmm.models.backbone import preset
from fmmm.models.factory import builder_tokenizers, create_model_and_builder, load_model_and_builder
from fmmm.models.multimodal import MultimodalConfig
from fmmm.tokenizers.action import ActionTokenizer, StateNormalizer
from fmmm.tokenizers.text import default_text_tokenizer


def tokenizers(bins: int = 16, state_dim: int = 5) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "text": default_text_tokenizer(300),
        "action": ActionTokenizer(bins).fit(torch.rand(50, 7, generator=generator) * 2 - 1),
        "state": StateNormalizer().fit(torch.randn(50, state_dim, generator=generator)),
    }


def config(**overrides) -> MultimodalConfig:
    values = dict(backbone=preset("debug"), text_vocab_size=400, action_bins=16, image_size=16,
                  patch_size=8, state_dim=5)  # fmt: skip
    return MultimodalConfig(**{**values, **overrides})


def test_saved_and_loaded_model_and_builder_agree(tmp_path):
    torch.manual_seed(0)
    model, builder = create_model_and_builder(config(), tokenizers())
    assert builder.action_offset == 400 > builder.text_tokenizer.vocab_size
    model.save_pretrained(tmp_path, tokenizers=builder_tokenizers(builder))
    loaded, reloaded = load_model_and_builder(tmp_path)
    assert reloaded.action_offset == builder.action_offset
    assert set(builder_tokenizers(reloaded)) == {"text", "image", "video", "action", "state"}
    sample = builder.vla_sample(
        [torch.zeros(3, 16, 16, dtype=torch.uint8)], torch.ones(5), "reach", torch.zeros(2, 7)
    )
    again = reloaded.vla_sample(
        [torch.zeros(3, 16, 16, dtype=torch.uint8)], torch.ones(5), "reach", torch.zeros(2, 7)
    )
    batch, batch_again = builder.build([sample], 64), reloaded.build([again], 64)
    assert torch.equal(batch.input_ids, batch_again.input_ids)
    torch.testing.assert_close(model(batch)["logits"], loaded(batch_again)["logits"])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(text_vocab_size=280), "raise model.text_vocab_size"),
        (dict(action_bins=32), "model.action_bins is 32 but the action tokenizer has 16"),
        (dict(state_dim=4), "model.state_dim is 4 but the state normalizer was fitted on 5"),
    ],
)
def test_tokenizers_that_do_not_fit_the_model_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        create_model_and_builder(config(**change), tokenizers())


def test_loading_a_folder_without_a_text_tokenizer_names_it(tmp_path):
    model, _ = create_model_and_builder(config(), tokenizers())
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tokenizers/text is missing"):
        load_model_and_builder(tmp_path)
