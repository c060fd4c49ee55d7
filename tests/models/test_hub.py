"""Hugging Face conventions of saved model folders: card, model_type, torch_dtype, hub ids."""

import json
import shutil

import pytest
import torch

from fmmm.models.backbone import preset
from fmmm.models.factory import builder_tokenizers, create_model_and_builder, load_model_and_builder
from fmmm.models.hub import read_model_card, resolve_model_dir
from fmmm.models.multimodal import MODEL_TYPE, MultimodalConfig, MultimodalModel
from fmmm.tokenizers.text import default_text_tokenizer

CARD = {
    "title": "reach VLA",
    "training_data": "runs/demos/reach_1200_seed0_noise0.3: 1200 scripted reach demonstrations",
    "evaluation": {"reach": {"episodes": 50, "success_rate": 0.96, "success_ci95": [0.86, 0.99]}},
    "commands": ["python -m fmmm.train configs/quickstart.yaml"],
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here touches the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _model(**overrides) -> MultimodalModel:
    torch.manual_seed(0)
    values = dict(backbone=preset("debug"), text_vocab_size=400, image_size=16, patch_size=8)
    return MultimodalModel(MultimodalConfig(**{**values, **overrides}))


def _assert_same_weights(a: MultimodalModel, b: MultimodalModel) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x.float(), y.float(), rtol=0, atol=0, msg=name)


def test_save_pretrained_writes_a_model_card_that_reads_back(tmp_path):
    _model().save_pretrained(tmp_path, card=CARD)
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("---\n") and "library_name: fmmm" in text
    for heading in ("# reach VLA", "## Training data", "## Evaluation results", "## Commands"):
        assert heading in text
    assert "| reach | 50 | 96.0% | [86.0%, 99.0%] |" in text
    assert "python -m fmmm.train configs/quickstart.yaml" in text
    assert '"model_type": "fmmm_multimodal"' in text  # the config section
    assert read_model_card(tmp_path) == CARD


def test_a_card_without_info_still_describes_the_model(tmp_path):
    _model().save_pretrained(tmp_path)
    assert "## Config" in (tmp_path / "README.md").read_text()
    assert read_model_card(tmp_path) == {}


def test_config_json_names_model_type_and_old_folders_still_load(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "new")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE and config["architectures"] == ["MultimodalModel"]
    assert config["torch_dtype"] == "float32"
    # a folder saved before model_type existed says "model": "MultimodalModel"
    old = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    del old["torch_dtype"], old["fmmm_version"]
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    (tmp_path / "old" / "config.json").write_text(json.dumps({"model": "MultimodalModel", **old}))
    _assert_same_weights(MultimodalModel.from_pretrained(tmp_path / "old"), model)
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="does not describe a MultimodalModel"):
        MultimodalModel.from_pretrained(tmp_path / "old")


def test_from_pretrained_casts_to_torch_dtype(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "fp32")
    assert MultimodalModel.from_pretrained(tmp_path / "fp32").lm_head.weight.dtype == torch.float32
    half = MultimodalModel.from_pretrained(tmp_path / "fp32", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    half.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    auto = MultimodalModel.from_pretrained(tmp_path / "bf16", torch_dtype="auto")
    assert auto.lm_head.weight.dtype == torch.bfloat16
    named = MultimodalModel.from_pretrained(tmp_path / "fp32", torch_dtype="float16")
    assert named.lm_head.weight.dtype == torch.float16
    with pytest.raises(ValueError, match="torch_dtype"):
        MultimodalModel.from_pretrained(tmp_path / "fp32", torch_dtype="int8")


def _fake_hub_cache(root, repo_id: str, folder) -> str:
    """The Hugging Face cache layout of one model repository snapshot; returns its commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_hub_id_resolves_from_the_local_cache_offline(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tokenizers = {"text": default_text_tokenizer(300)}
    config = MultimodalConfig(backbone=preset("debug"), text_vocab_size=400, image_size=16)
    model, builder = create_model_and_builder(config, tokenizers)
    model.save_pretrained(tmp_path / "saved", tokenizers=builder_tokenizers(builder), card=CARD)
    commit = _fake_hub_cache(tmp_path / "cache", "fmmm-org/reach-vla", tmp_path / "saved")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    snapshot = tmp_path / "cache" / "models--fmmm-org--reach-vla" / "snapshots" / commit
    assert resolve_model_dir("fmmm-org/reach-vla") == snapshot
    assert resolve_model_dir(f"fmmm-org/reach-vla@{commit}") == snapshot
    _assert_same_weights(MultimodalModel.from_pretrained("fmmm-org/reach-vla"), model)
    loaded, loaded_builder = load_model_and_builder("fmmm-org/reach-vla")
    assert loaded_builder.text_tokenizer.vocab_size == builder.text_tokenizer.vocab_size
    assert read_model_card(resolve_model_dir("fmmm-org/reach-vla")) == CARD


def test_hub_id_missing_from_the_cache_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="hf download fmmm-org/absent") as error:
        MultimodalModel.from_pretrained("fmmm-org/absent")
    assert "\n" not in str(error.value)


def test_push_to_hub_offline_is_a_one_line_error():
    with pytest.raises(RuntimeError, match="offline") as error:
        _model().push_to_hub("fmmm-org/reach-vla")
    assert "\n" not in str(error.value)
