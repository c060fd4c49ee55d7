import pytest
import yaml

from fmmm.config import config_to_dict, load_config
from fmmm.train.pretrain import PretrainConfig
from fmmm.train.recipe import check_resumable

SMOKE = "configs/pretrain/smoke.yaml"


def saved_run(tmp_path, config: dict):
    (tmp_path / "ckpt" / "step_00000002").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_run_saved_with_run_dir_resumes_and_only_allowed_keys_may_change(tmp_path):
    cfg = load_config(PretrainConfig, SMOKE, [f"out_dir={tmp_path}"])
    old = config_to_dict(cfg)
    old["run_dir"] = old.pop("out_dir")  # written before the rename
    saved_run(tmp_path, old)
    check_resumable(cfg, tmp_path)  # same run: resumes
    longer = load_config(PretrainConfig, SMOKE, [f"out_dir={tmp_path}", "train.steps=50",
                                                 "train.logging.every=5"])  # fmt: skip
    check_resumable(longer, tmp_path)  # more steps, other logging: still the same run
    wider = load_config(PretrainConfig, SMOKE, [f"out_dir={tmp_path}", "model.backbone.dim=128"])
    with pytest.raises(ValueError, match=r"another config \(model\.backbone\.dim differ\)"):
        check_resumable(wider, tmp_path)
