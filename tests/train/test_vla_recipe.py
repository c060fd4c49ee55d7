import importlib.util
import json

import pytest
import torch

from fmmm.config import ConfigError, load_config
from fmmm.datasets.robot import RobotDataset
from fmmm.resources import data_dir
from fmmm.tokenizers.sequence import Modality
from fmmm.train.vla import (
    DemoFrames,
    FrameSamples,
    Validator,
    VLARunConfig,
    adapt,
    build_vla,
    find_or_collect,
    fit_patch_normalizer,
    frames_cache_path,
    task_stream,
    train_vla,
)

TINY = [
    "model.backbone.dim=32",
    "model.backbone.n_layers=1",
    "model.backbone.n_heads=2",
    "model.backbone.ffn_hidden=64",
    "model.action_bins=16",
    "model.image_size=16",
    "train.steps=3",
    "train.batch_size=4",
    "train.prefetch=false",
    "train.logging.progress=false",
    "train.optim.warmup_steps=1",
]


def tiny_config(tmp_path, demos, *extra) -> VLARunConfig:
    overrides = [*TINY, f"data.dataset={demos}", f"out_dir={tmp_path / 'run'}", *extra]
    return load_config(VLARunConfig, data_dir("configs") / "quickstart.yaml", overrides)


def test_every_vla_config_loads():
    paths = sorted((data_dir("configs") / "vla").glob("*.yaml"))
    assert paths
    for path in [*paths, data_dir("configs") / "quickstart.yaml"]:
        cfg = load_config(VLARunConfig, path)
        assert cfg.kind == "vla" and cfg.eval.episodes >= 1


@pytest.mark.parametrize(
    "override, key",
    [
        ("adaptation.mode=half", "adaptation.mode"),
        ("init.mode=warm", "init.mode"),
        ("policy.chunk=0", "chunk"),
        ("data.episodes=0", "data.episodes"),
        ("kind=sft", "kind"),
        ("model.vision_tower=timm:vit_tiny_patch16_224", "vision_film"),
    ],
)
def test_bad_vla_config_values_raise_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(VLARunConfig, data_dir("configs") / "quickstart.yaml", [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("run_dir=runs/x", "'run_dir' is now 'out_dir'"),
        ("model.dim=64", "'model.dim' is now 'model.backbone.dim'"),
        ("model.init=scratch", "'model.init' is now 'init.mode'"),
    ],
)
def test_renamed_keys_stop_with_a_one_line_error_saying_what_to_rename(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(VLARunConfig, data_dir("configs") / "quickstart.yaml", [override])
    old = tmp_path / "old.yaml"
    old.write_text(f"kind: vla\n{override.split('.')[0].split('=')[0]}: {{}}\n".replace("{}", "x")
                   if "." not in override.split("=")[0] else "kind: vla\nmodel:\n  " + override.split(".", 1)[1].replace("=", ": ") + "\n")  # fmt: skip
    with pytest.raises(ConfigError, match=f"{old}: {message}"):
        load_config(VLARunConfig, old)


def prepared(cfg, demos):
    """(vla, frames, samples) of a run config on a demonstrations folder, as train_vla makes them."""
    dataset = RobotDataset(demos)
    frames = DemoFrames(dataset, cfg.policy.cameras, cfg.task, progress=False)
    vla, _ = build_vla(cfg, dataset, frames)
    vla.patch_normalizer = fit_patch_normalizer(frames, vla)
    return vla, frames, FrameSamples(frames, vla)


@pytest.mark.parametrize("head", ["tokens", "l1", "flow"])
def test_table_batches_equal_batches_built_sample_by_sample(tmp_path, reach_demos, head):
    cfg = tiny_config(
        tmp_path, reach_demos, "policy.cameras=[agentview,wrist]", "policy.chunk=3",
        f"policy.head={head}",
    )  # fmt: skip
    vla, frames, samples = prepared(cfg, reach_demos)
    assert len(samples) == len(RobotDataset(reach_demos))
    rows = [len(samples) - 1, 0, 2]
    got = samples.batch(rows)
    prefixes, bins, masks, chunks = [], [], [], []
    for row in rows:
        episode, frame = int(frames.episode[row]), int(frames.frame[row])
        observation = {
            "instruction": frames.instructions[episode],
            "state": frames.states[row].numpy(),
        }
        for camera in cfg.policy.cameras:
            observation[camera] = frames.images[camera][row].numpy()
        prefixes.append(vla.prefix_segments(observation))
        start, length = int(frames.starts[episode]), int(frames.lengths[episode])
        steps = torch.arange(frame, frame + 3)
        actions = frames.actions[start + steps.clamp(max=length - 1)]
        bins.append(vla.builder.action_tokenizer.encode(actions.double()).flatten())
        masks.append((steps < length).repeat_interleave(vla.action_dim))
        chunks.append(vla.normalize_actions(actions))
    expected = vla.training_batch(prefixes, torch.stack(bins), torch.stack(masks))
    for name in (
        "input_ids",
        "modality",
        "positions",
        "sample_ids",
        "prefix",
        "attention_mask",
        "targets",
    ):
        assert torch.equal(getattr(got.tokens, name), getattr(expected, name)), name
    assert got.tokens.features.keys() == expected.features.keys() == {"image", "state"}
    for key in got.tokens.features:
        assert torch.allclose(got.tokens.features[key], expected.features[key], atol=1e-5), key
    if head == "tokens":
        # The last frame of an episode predicts one real action; the rest of its chunk is masked.
        assert int((got.tokens.targets[0] != -100).sum()) == 7
        assert int((got.tokens.targets[1] != -100).sum()) == 21
    else:
        assert torch.equal(got.actions, torch.stack(chunks))
        assert got.mask[0].tolist() == [True, False, False] and got.mask[1].all()
        # the chunk's positions attend to each other both ways, the prefix never sees them
        action = got.tokens.modality[1] == int(Modality.ACTION)
        block = got.tokens.attention_mask[1][action][:, action]
        assert block.all() and not got.tokens.attention_mask[1][~action][:, action].any()


def test_frames_are_cached_beside_the_demonstrations_and_reloaded_identically(reach_demos):
    dataset = RobotDataset(reach_demos)
    first = DemoFrames(dataset, ["agentview"], "reach", progress=False)
    cache = frames_cache_path(dataset, ["agentview"])
    assert cache.is_file() and cache.parent == reach_demos / ".cache"
    mtime = cache.stat().st_mtime_ns
    second = DemoFrames(dataset, ["agentview"], "reach", progress=False)
    assert cache.stat().st_mtime_ns == mtime  # read, not rewritten
    assert torch.equal(first.images["agentview"], second.images["agentview"])
    assert torch.equal(first.actions, second.actions) and first.tasks == second.tasks
    assert frames_cache_path(dataset, ["agentview", "wrist"]) != cache


def test_frozen_mode_trains_everything_but_the_backbone(tmp_path, reach_demos):
    cfg = tiny_config(tmp_path, reach_demos, "adaptation.mode=frozen")
    vla, _, _ = prepared(cfg, reach_demos)
    adapt(vla, cfg.adaptation)
    for name, param in vla.named_parameters():
        assert param.requires_grad == (".backbone." not in f".{name}")


def test_same_seed_gives_the_same_trained_policy(tmp_path, reach_demos):
    first = train_vla(tiny_config(tmp_path / "a", reach_demos, "eval.episodes=0"))
    second = train_vla(tiny_config(tmp_path / "b", reach_demos, "eval.episodes=0"))
    assert first["final_loss"] == second["final_loss"]
    a = (tmp_path / "a" / "run" / "model" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "run" / "model" / "model.safetensors").read_bytes()
    assert a == b


@pytest.mark.slow
def test_vla_run_trains_saves_evaluates_and_summarizes_with_lora(tmp_path, reach_demos):
    cfg = tiny_config(
        tmp_path,
        reach_demos,
        "adaptation.mode=lora",
        "adaptation.lora.rank=2",
        "eval.episodes=2",
        "eval.num_envs=1",
    )
    summary = train_vla(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "summary.json").read_text())
    assert saved["eval"]["episodes"] == 2 and 0 <= saved["eval"]["success_rate"] <= 1
    assert summary["trainable_fraction"] < 0.5
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run / "policy.json").read_text())["type"] == "vla"
    assert (run / "eval" / "results.json").is_file()


def test_a_policy_adapts_from_a_trained_policy_run_with_its_head_and_statistics(
    tmp_path, reach_demos
):
    from safetensors.torch import load_file

    from fmmm.policies.vla import VLA

    flow = ("policy.head=flow", "eval.episodes=0")
    train_vla(tiny_config(tmp_path / "a", reach_demos, *flow))
    source = tmp_path / "a" / "run"
    cfg = tiny_config(
        tmp_path / "b", reach_demos, *flow, "init.mode=pretrained", f"init.pretrained={source}"
    )
    dataset = find_or_collect(cfg)
    vla, origin = build_vla(cfg, dataset, DemoFrames(dataset, cfg.policy.cameras, cfg.task))
    assert origin["action_head"] == origin["patch_statistics"] == "pretrained"
    trained = VLA.load(source)
    for name, value in load_file(source / "action_head.safetensors").items():
        torch.testing.assert_close(vla.action_head.state_dict()[name], value, rtol=0, atol=0)
    for name, value in trained.model.state_dict().items():
        torch.testing.assert_close(vla.model.state_dict()[name], value, rtol=0, atol=0)
    torch.testing.assert_close(vla.action_low, trained.action_low, rtol=0, atol=0)
    # a head of another kind starts fresh; the control (pretrained_shape) takes nothing
    l1 = tiny_config(
        tmp_path / "c", reach_demos, "policy.head=l1", "init.mode=pretrained",
        f"init.pretrained={source}",
    )  # fmt: skip
    assert (
        build_vla(l1, dataset, DemoFrames(dataset, l1.policy.cameras, l1.task))[1]["action_head"]
        == "fresh"
    )
    control = tiny_config(
        tmp_path / "d", reach_demos, *flow, "init.mode=pretrained_shape",
        f"init.pretrained={source}",
    )  # fmt: skip
    fresh, origin = build_vla(control, dataset, DemoFrames(dataset, cfg.policy.cameras, cfg.task))
    assert "action_head" not in origin and origin["init"] == "pretrained_shape"
    assert not torch.equal(fresh.action_head.out[1].weight, vla.action_head.out[1].weight)


def test_rerun_with_another_config_refuses_the_old_checkpoints(tmp_path, reach_demos):
    first = train_vla(tiny_config(tmp_path, reach_demos, "eval.episodes=0"))
    assert list((tmp_path / "run" / "ckpt").glob("step_*"))
    # the same config again resumes the finished run
    again = train_vla(tiny_config(tmp_path, reach_demos, "eval.episodes=0"))
    assert again["steps"] == first["steps"] == 3 and again["status"] == "completed"
    with pytest.raises(ValueError, match=r"another config \(policy\.chunk differ\)"):
        train_vla(tiny_config(tmp_path, reach_demos, "eval.episodes=0", "policy.chunk=3"))
    # more steps is a legitimate resume: it continues from the saved step 3
    longer = train_vla(tiny_config(tmp_path, reach_demos, "eval.episodes=0", "train.steps=4"))
    assert longer["steps"] == 4 and longer["status"] == "completed"


def test_vla_run_on_several_tasks_trains_one_policy_and_evaluates_each(tmp_path):
    from fmmm.collect import collect

    demos = tmp_path / "demos"
    collect("reach,push", 2, demos, progress=False)
    cfg = tiny_config(
        tmp_path, demos, "task=reach,push", "eval.episodes=1", "eval.num_envs=2",
        "eval.val_episodes=1", "train.eval_every=2", "policy.head=l1",
        "train.logging.tensorboard=true",
    )  # fmt: skip
    summary = train_vla(cfg)
    assert summary["demonstrations"] == 4
    assert set(summary["eval"]) == {"reach", "push"}
    assert all(result["episodes"] == 1 for result in summary["eval"].values())
    # validation ran at step 2 and at the end, on both tasks, and chose one of them
    history = summary["validation"]["val_history"]
    assert [row["step"] for row in history] == [2, 3]
    assert set(history[0]) == {"val_success", "val_success/reach", "val_success/push", "step"}
    assert summary["validation"]["val_evaluation"] in (1, 2)
    best = json.loads((tmp_path / "run" / "validation" / "best.json").read_text())
    assert best["evaluation"] == summary["validation"]["val_evaluation"]
    assert best["step"] == history[best["evaluation"] - 1]["step"]
    assert len(list((tmp_path / "run" / "val_videos").glob("*.mp4"))) == 2
    assert list((tmp_path / "run" / "tensorboard" / "rollouts").glob("events.*"))


def test_batches_draw_tasks_in_the_configured_proportions(tmp_path):
    from fmmm.collect import collect

    demos = tmp_path / "demos"
    collect("reach,lift", 2, demos, progress=False)
    cfg = tiny_config(tmp_path, demos, "task=reach,lift", "data.task_weights={reach: 3, lift: 1}")
    vla, frames, samples = prepared(cfg, demos)
    stream = task_stream(cfg, frames, samples)
    plan = stream.plan(0, 400)
    drawn = [frames.tasks[int(frames.episode[stream.datasets[s][i]])] for s, i in plan]
    assert (
        abs(drawn.count("reach") - 300) <= 2 and len(drawn) == 400
    )  # Weyl sequence: within O(log n)
    bad = tiny_config(tmp_path, demos, "task=reach,lift", "data.task_weights={stack: 1}")
    with pytest.raises(ValueError, match="task_weights names stack"):
        task_stream(bad, frames, samples)


def test_a_named_dataset_that_is_missing_or_for_another_task_is_refused(tmp_path, reach_demos):
    with pytest.raises(ValueError, match="is not a dataset"):
        find_or_collect(tiny_config(tmp_path, tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()  # nothing collected into a misspelled folder
    with pytest.raises(ValueError, match="holds reach demonstrations but the run's task is push"):
        find_or_collect(tiny_config(tmp_path, reach_demos, "task=push"))


@pytest.mark.skipif(
    importlib.util.find_spec("metaworld") is None,
    reason='metaworld is not installed (pip install -e ".[metaworld]")',
)
def test_vla_run_on_meta_world_learns_its_4d_actions(tmp_path):
    from fmmm.collect import collect
    from fmmm.policies.vla import VLA

    demos = tmp_path / "demos"
    collect("metaworld:drawer-close-v3", 1, demos, progress=False)
    cfg = tiny_config(tmp_path, demos, "task=metaworld:drawer-close-v3", "eval.episodes=0")
    assert train_vla(cfg)["status"] == "completed"
    assert VLA.load(tmp_path / "run").action_dim == 4


@pytest.mark.slow
@pytest.mark.parametrize("head, bound", [("tokens", 0.6), ("l1", 0.1), ("flow", 0.3)])
def test_each_head_overfits_a_few_demonstrations_and_replays_them(
    tmp_path, reach_demos, head, bound
):
    """A broken head cannot pass: a small policy of each head fits four demonstrations (its final
    loss under `bound`) and succeeds from the start states of at least three of them."""
    import fmmm.envs
    from fmmm.eval.rollout import run_episode
    from fmmm.policies.factory import load_policy

    cfg = tiny_config(
        tmp_path, reach_demos, f"policy.head={head}", "policy.chunk=4", "policy.execute=4",
        "policy.cameras=[agentview]", "model.backbone.dim=64", "model.backbone.n_layers=2",
        "model.backbone.n_heads=4", "model.backbone.ffn_hidden=128", "model.action_bins=64",
        "train.steps=300", "train.batch_size=16", "train.optim.lr=2e-3", "eval.episodes=0",
    )  # fmt: skip
    summary = train_vla(cfg)
    assert summary["final_loss"] < bound, summary["final_loss"]
    factory = load_policy(str(tmp_path / "run"))
    env = fmmm.envs.make_env("reach")
    successes = 0
    for row in RobotDataset(reach_demos).episodes:  # the demonstrations' own start states
        successes += run_episode(env, factory(env), row["seed"], 0)["success"]
    env.close()
    assert successes >= 3, successes


def test_a_preempted_run_saves_no_policy_and_evaluates_nothing(tmp_path, reach_demos, monkeypatch):
    from fmmm.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "_preemption_requested", lambda self: True)
    summary = train_vla(tiny_config(tmp_path, reach_demos, "eval.episodes=2"))
    assert summary["status"] == "preempted" and summary["eval"] is None
    assert not (tmp_path / "run" / "policy.json").exists()
    assert list((tmp_path / "run" / "ckpt").glob("step_*"))  # it resumes from here


def test_a_resumed_run_keeps_the_validation_history_and_best_weights_of_before(tmp_path):
    from safetensors.torch import save_file

    from fmmm.utils.io import atomic_write_json

    cfg = tiny_config(tmp_path, tmp_path / "demos")
    run = tmp_path / "run"
    (run / "validation").mkdir(parents=True)
    events = [
        {"event": "eval", "eval/val_success": 0.5, "eval/val_success/reach": 0.5, "step": 2},
        {"event": "checkpoint", "step": 2},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(row) + "\n" for row in events))
    weights = {"w": torch.arange(3.0)}
    save_file(weights, run / "validation" / "best.safetensors")
    atomic_write_json(run / "validation" / "best.json", {"step": 2, "val_success": 0.5,
                                                         "evaluation": 1})  # fmt: skip
    validator = Validator(cfg, run)
    validator._resume()
    assert validator.calls == 1
    assert validator.history == [{"val_success": 0.5, "val_success/reach": 0.5, "step": 2}]
    score, evaluation, state = validator.best
    assert (score, evaluation) == (0.5, 1) and torch.equal(state["w"], weights["w"])

    # weights whose evaluation the trainer trimmed away (a resume from before it) do not count
    atomic_write_json(run / "validation" / "best.json", {"step": 4, "val_success": 0.75,
                                                         "evaluation": 2})  # fmt: skip
    validator = Validator(cfg, run)
    validator._resume()
    assert validator.calls == 1 and validator.best is None
