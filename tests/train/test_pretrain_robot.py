import numpy as np
import pytest

from fmmm.datasets.robot import episode_path, feature_spec, write_episode, write_metadata
from fmmm.train.metrics import read_jsonl

STATE_DIM = 5


def write_robot_dataset(root, episodes=3, length=6):
    rng = np.random.default_rng(0)
    rows, first = [], None
    for index in range(episodes):
        episode = {
            "observation.images.agentview": rng.integers(
                0, 255, (length, 16, 16, 3), dtype=np.uint8
            ),
            "observation.state": rng.normal(size=(length, STATE_DIM)).astype(np.float32),
            "action": rng.uniform(-1, 1, (length, 7)).astype(np.float32),
            "frame_index": np.arange(length, dtype=np.int64),
            "episode_index": np.full(length, index, dtype=np.int64),
        }
        write_episode(episode_path(root, index), episode)
        rows.append({"episode_index": index, "tasks": ["reach the red cube"], "length": length})
        first = first or episode
    info = {"features": feature_spec(first), "fps": 10, "total_episodes": episodes,
            "total_frames": episodes * length}  # fmt: skip
    write_metadata(root, info, rows, ["reach the red cube"], {})


def test_robot_frames_train_action_tokens_after_observation_and_instruction(tmp_path):
    from fmmm.train.pretrain import run

    write_robot_dataset(tmp_path / "robot")
    cache = tmp_path / "cache"
    overrides = [
        f"out_dir={tmp_path / 'run'}",
        f"data.cache_dir={cache}",
        f"data.sources=[{{kind: robot, weight: 0.5, path: '{tmp_path / 'robot'}'}}, {{kind: text, weight: 0.5}}]",
        "data.action_chunk=2",
        f"model.state_dim={STATE_DIM}",
        "objectives.contrastive=0",
        "objectives.masked=0",
        "train.steps=2",
        "train.eval_at_start=false",
        "train.logging.tensorboard=false",
        "train.logging.progress=false",
    ]
    result = run("configs/pretrain/smoke.yaml", overrides)
    assert result.status == "completed"
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(np.isfinite(r["ar_action_loss"]) and np.isfinite(r["ar_text_loss"]) for r in rows)
    assert (tmp_path / "run" / "model" / "tokenizers" / "action").is_dir()
    with pytest.raises(
        ValueError, match="model.state_dim is 3 but the state normalizer was fitted on 5"
    ):
        run("configs/pretrain/smoke.yaml", [*overrides[:5], "model.state_dim=3",
            f"out_dir={tmp_path / 'other'}"])  # fmt: skip
