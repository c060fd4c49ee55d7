"""One error path for every entry point: bad input is one `error:` line naming the culprit, exit 2,
no traceback; every command answers --help; nothing is downloaded and no secret is saved."""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest
import torch

from fmmm.utils.cli import describe, run_main

from .conftest import REPO, assert_one_line_error, run_cli, unchanged

SMOKE = REPO / "configs" / "pretrain" / "smoke.yaml"
SFT = REPO / "configs" / "posttrain" / "sft.yaml"
ENTRY_POINTS = [
    ("fmmm.demo", []),
    ("fmmm.datasets", []),
    ("fmmm.datasets", ["export-lerobot"]),
    ("fmmm.datasets", ["import-lerobot"]),
    ("fmmm.data", []),
    ("fmmm.collect", []),
    ("fmmm.eval", []),
    ("fmmm.scaling", []),
    ("fmmm.train", []),
]


@pytest.mark.parametrize("module, command", ENTRY_POINTS, ids=lambda v: " ".join(v) or None)
def test_every_command_answers_help_with_its_usage(module, command):
    result = run_cli(module, *command, "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.lower().startswith("usage:") and not result.stderr.strip()


def _raise(exc: BaseException):
    def body():
        raise exc

    return body


def _safetensor_error(tmp_path) -> Exception:
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    try:
        load_file(path)
    except Exception as exc:  # noqa: BLE001 (the point is its type)
        return exc
    raise AssertionError("a truncated header loaded")


def _state_dict_mismatch() -> RuntimeError:
    try:
        torch.nn.Linear(2, 3).load_state_dict({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)})
    except RuntimeError as exc:
        return exc
    raise AssertionError("a mismatched state dict loaded")


def test_input_errors_of_every_kind_become_one_line_with_exit_2(tmp_path, capsys):
    import yaml
    from omegaconf import OmegaConf

    def omegaconf_error():
        try:
            OmegaConf.create({"a": 1}).b.c  # noqa: B018
        except Exception as exc:  # noqa: BLE001
            return exc

    cases = [
        (ValueError("bad value\nsecond line"), "bad value second line"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/in.json"), "/x/in.json"),
        (PermissionError(errno.EACCES, "Permission denied", "/x/out"), "permission denied: /x/out"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/d"), "/x/d"),
        (json.JSONDecodeError("Expecting value", "{", 1), "expecting value"),
        (KeyError("backbone"), "missing key 'backbone'"),
        (TypeError("__init__() got an unexpected keyword argument 'dims'"), "'dims'"),
        (_safetensor_error(tmp_path), "SafetensorError"),
        (yaml.YAMLError("bad yaml"), "bad yaml"),
        (omegaconf_error(), "ConfigAttributeError"),
        (_state_dict_mismatch(), "size mismatch for weight"),
    ]
    for exc, culprit in cases:
        assert run_main(_raise(exc)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert culprit.lower() in err.lower(), err


def test_an_error_raised_by_a_library_names_the_file_it_was_reading(tmp_path, capsys):
    from safetensors.torch import load_file

    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    assert run_main(lambda: load_file(path)) == 2
    assert str(path) in capsys.readouterr().err
    assert describe(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))).lower().startswith("no space")


def test_bugs_keep_their_traceback_and_fmmm_traceback_shows_input_errors_too(monkeypatch):
    with pytest.raises(AttributeError):
        run_main(_raise(AttributeError("a bug")))
    with pytest.raises(RuntimeError):
        run_main(_raise(RuntimeError("CUDA out of memory")))
    monkeypatch.setenv("FMMM_TRACEBACK", "1")
    with pytest.raises(ValueError):
        run_main(_raise(ValueError("bad value")))


def test_the_error_path_imports_nothing_heavy():
    import subprocess

    heavy = "{'torch', 'omegaconf', 'safetensors', 'yaml', 'numpy'}"
    code = f"import sys, fmmm.utils.cli; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize("module", ["fmmm.scaling", "fmmm.data"])
def test_a_config_file_that_is_a_yaml_list_is_one_line(module, write):
    config = write("list.yaml", "- a\n- b\n")
    args = [config] if module == "fmmm.scaling" else ["stats", "-i", config.parent, config]
    with unchanged(config.parent):
        result = run_cli(module, *args)
    assert_one_line_error(result, str(config))


def test_train_help_is_usage_not_a_missing_config(tmp_path):
    result = run_cli("fmmm.train", "-h")
    assert result.returncode == 0 and "usage: python -m fmmm.train CONFIG" in result.stdout
    assert_one_line_error(run_cli("fmmm.train"), "usage")


def test_an_unwritable_eval_out_is_refused_before_the_evaluation(tmp_path):
    blocker = tmp_path / "results.json"
    blocker.write_text("not a folder")
    with unchanged(tmp_path):
        result = run_cli(
            "fmmm.eval", "--policy", "scripted", "--task", "reach", "--episodes", "500",
            "--out", blocker / "eval", timeout=60,
        )  # fmt: skip
    assert_one_line_error(result, str(blocker))


def _saved_model(folder):
    from fmmm.models.backbone import preset
    from fmmm.models.multimodal import MultimodalConfig, MultimodalModel
    from fmmm.tokenizers.text import default_text_tokenizer

    torch.manual_seed(0)
    config = MultimodalConfig(backbone=preset("debug"), text_vocab_size=400, image_size=16,
                              patch_size=8)  # fmt: skip
    MultimodalModel(config).save_pretrained(
        folder, tokenizers={"text": default_text_tokenizer(300)}
    )
    return folder


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _drop_backbone(path):
    raw = json.loads(path.read_text())
    del raw["backbone"]
    path.write_text(json.dumps(raw))


def _widen(path):
    raw = json.loads(path.read_text())
    raw["backbone"]["dim"] *= 2
    raw["backbone"]["ffn_hidden"] *= 2
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "damage, file, culprit",
    [
        (_truncate, "model.safetensors", "model.safetensors"),
        (_drop_backbone, "config.json", "missing backbone"),
        (_widen, "config.json", "size mismatch"),
    ],
    ids=["truncated-weights", "config-missing-field", "weights-of-another-shape"],
)
def test_a_damaged_pretrained_model_is_one_line_and_left_as_it_was(tmp_path, damage, file, culprit):
    model = _saved_model(tmp_path / "model")
    damage(model / file)
    overrides = ["data.tasks=[reach]", "data.scenes=2", "data.eval_scenes=1", "data.image_size=16",
                 "train.steps=1", "train.batch_size=2", "train.logging.progress=false",
                 "init.mode=pretrained", f"init.pretrained={model}", f"out_dir={tmp_path / 'run'}"]  # fmt: skip
    with unchanged(model):
        result = run_cli("fmmm.train", SFT, *overrides, timeout=300)
    line = assert_one_line_error(result, culprit)
    assert str(model) in line


def test_load_checkpoint_of_another_model_shape_is_a_value_error_naming_it(tmp_path):
    from fmmm.train.checkpoint import capture_rng_state, load_checkpoint, save_checkpoint

    small, wide = torch.nn.Linear(4, 2), torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(small.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path, 1, module=small, optimizer=optimizer, scheduler=None,
                           trainer_state={}, rng_states=[capture_rng_state()])  # fmt: skip
    with pytest.raises(ValueError, match="step_000001 does not match the model: size mismatch"):
        load_checkpoint(path, module=wide)


@pytest.mark.slow
def test_resuming_into_a_run_whose_model_shape_changed_is_one_line(tmp_path):
    quick = ["train.steps=1", "train.eval_at_start=false", "train.logging.tensorboard=false",
             "train.logging.progress=false", f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    first = run_cli("fmmm.train", SMOKE, f"out_dir={tmp_path / 'a'}", *quick, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoint = tmp_path / "a" / "ckpt" / "step_000001"
    with unchanged(tmp_path / "a"):
        wider = run_cli("fmmm.train", SMOKE, f"out_dir={tmp_path / 'a'}", *quick,
                        "model.backbone.dim=128", timeout=300)  # fmt: skip
        moved = run_cli("fmmm.train", SMOKE, f"out_dir={tmp_path / 'b'}", *quick,
                        "model.backbone.dim=128", f"train.checkpoint.resume={checkpoint}",
                        timeout=300)  # fmt: skip
    assert_one_line_error(wider, "model.backbone.dim")
    assert_one_line_error(moved, "size mismatch")


def _fake_hf_cache(cache, repo_id: str, filename: str, tensors: dict) -> None:
    from safetensors.torch import save_file

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / "0").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0")
    save_file(tensors, str(repo / "snapshots" / "0" / filename))


def test_pretrained_tower_weights_come_only_from_the_local_cache(tmp_path, monkeypatch):
    import socket

    import timm

    from fmmm.models.embeddings import VisionTower

    def no_network(*args, **kwargs):
        raise AssertionError("fmmm tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="hf download timm/vit_tiny_patch16_224"):
        VisionTower("timm:vit_tiny_patch16_224", 8, 32, 16, weights="pretrained")
    with pytest.raises(ValueError, match="hf download timm/vit_base_patch32_clip_224.openai"):
        VisionTower("open_clip:ViT-B-32", 8, 224, 32, weights="pretrained")

    state = timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict()
    state = {k: v.contiguous() for k, v in state.items()}
    state["cls_token"] = torch.full_like(state["cls_token"], 0.5)
    repo_id = timm.models.get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    _fake_hf_cache(tmp_path / "hub", repo_id, "model.safetensors", state)
    tower = VisionTower("timm:vit_tiny_patch16_224", 8, 32, 16, weights="pretrained")
    assert torch.all(tower.tower.cls_token == 0.5)


def test_a_missing_pretrained_tower_is_one_line_from_the_cli(tmp_path, write):
    config = write("tower.yaml", "vision_tower: timm:vit_tiny_patch16_224\n"
                   "vision_tower_weights: pretrained\nimage_size: 32\npatch_size: 16\n")  # fmt: skip
    result = run_cli("fmmm.scaling", config, env={"HF_HUB_CACHE": str(tmp_path / "empty")})
    assert_one_line_error(result, "hf download")


def test_saved_configs_keep_environment_interpolations_unresolved(tmp_path, monkeypatch):
    from fmmm.config import config_to_dict, load_config, save_config
    from fmmm.train.pretrain import PretrainConfig

    monkeypatch.setenv("FMMM_TEST_SECRET", "s3cr3t-token")
    monkeypatch.setenv("FMMM_TEST_STEPS", "7")
    cfg = load_config(PretrainConfig, SMOKE, ["out_dir=${oc.env:FMMM_TEST_SECRET}",
                                              "train.steps=${oc.env:FMMM_TEST_STEPS}"])  # fmt: skip
    assert cfg.out_dir == "s3cr3t-token" and cfg.train.steps == 7
    save_config(cfg, tmp_path / "config.yaml")
    saved = (tmp_path / "config.yaml").read_text()
    assert "s3cr3t-token" not in saved and "${oc.env:FMMM_TEST_SECRET}" in saved
    assert "${oc.env:FMMM_TEST_STEPS}" in saved
    assert load_config(PretrainConfig, tmp_path / "config.yaml").out_dir == "s3cr3t-token"
    assert "s3cr3t-token" not in json.dumps(config_to_dict(cfg, resolve_env=False))
