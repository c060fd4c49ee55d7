from dataclasses import dataclass, field

import pytest

from fmmm.config import ConfigError, load_config, save_config, split_cli


@dataclass
class ModelSection:
    width: int = 64
    heads: int = 4

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(
                f"model.width ({self.width}) must be divisible by model.heads ({self.heads})"
            )


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    name: str = "run"
    lr: float = 1e-3


def test_yaml_then_dotted_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 128\nname: from_file\n")
    cfg = load_config(RunConfig, path, ["model.heads=8", "lr=0.5"])
    assert cfg == RunConfig(model=ModelSection(width=128, heads=8), name="from_file", lr=0.5)
    assert isinstance(cfg.model, ModelSection)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.widht=3"], "model.widht"),
        (["model.width=abc"], "model.width"),
        (["model.width=30"], "divisible"),
        (["name"], "key=value"),
    ],
)
def test_bad_overrides_give_one_line_error_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, None, overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*depth"):
        load_config(RunConfig, path)


def test_missing_file_is_named():
    with pytest.raises(ConfigError, match="not_there.yaml"):
        load_config(RunConfig, "not_there.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(RunConfig, None, ["model.width=256", "name=x"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(RunConfig, tmp_path / "config.yaml") == cfg


def test_split_cli_separates_path_and_overrides():
    assert split_cli(["a.yaml", "x=1", "y.z=2"]) == ("a.yaml", ["x=1", "y.z=2"])
    with pytest.raises(ConfigError):
        split_cli(["a.yaml", "b.yaml"])


@dataclass
class WeightsConfig:
    weights: dict[str, float] = field(default_factory=dict)
    model: ModelSection = field(default_factory=ModelSection)


def test_a_mapping_override_replaces_a_free_form_mapping_and_merges_into_a_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("weights: {push: 1.5, stack: 2.0}\nmodel: {width: 128}\n")
    assert load_config(WeightsConfig, path, ["weights={}"]).weights == {}
    assert load_config(WeightsConfig, path, ["weights={lift: 0.5}"]).weights == {"lift": 0.5}
    assert load_config(WeightsConfig, path, ["weights.lift=0.5"]).weights == {
        "push": 1.5,
        "stack": 2.0,
        "lift": 0.5,
    }
    assert load_config(WeightsConfig, path, ["model={heads: 8}"]).model == ModelSection(128, 8)
    with pytest.raises(ConfigError, match="weights"):
        load_config(WeightsConfig, path, ["weights={push: abc}"])
