"""LeRobot interop check, one step per call; `benchmarks/lerobot_interop.sh` runs the four in turn.

    python benchmarks/lerobot_interop.py fmmm-export WORK      # fmmm's venv
    python benchmarks/lerobot_interop.py lerobot-load WORK     # a venv with lerobot==0.4.4
    python benchmarks/lerobot_interop.py lerobot-create WORK   # a venv with lerobot==0.4.4
    python benchmarks/lerobot_interop.py fmmm-import WORK      # fmmm's venv

fmmm-export collects pick_place demonstrations and exports them as LeRobot v3.0 twice: with
LeRobot's file sizes (one data and one video file per camera) and with tiny ones (several files).
lerobot-load reads both with the real `LeRobotDataset` under every video backend that loads and
checks every frame: actions, states and tasks exact, pixels within the H.264 error. lerobot-create
records a dataset with `LeRobotDataset.create` + `add_frame` + `save_episode` (LeRobot's default
AV1 video, plus a PNG `image` feature); fmmm-import imports it and checks it exactly (pixels of the
video within the codec's error). Each step prints PASS/FAIL lines and exits 1 on a failure.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

EPISODES = 4
EXPORTS = {
    "default": {},
    "small-files": {"data_files_size_in_mb": 0.002, "video_files_size_in_mb": 0.02},
}
# H.264/AV1 yuv420p at 64x64: mean error of a few levels, more on coloured edges
MEAN_PIXEL_ERROR = 6.0
FAILED = []


def check(ok: bool, message: str) -> None:
    print(("PASS " if ok else "FAIL ") + message, flush=True)
    if not ok:
        FAILED.append(message)


def pixel_error(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    error = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(error.mean()), int(error.max())


def fmmm_export(work: Path) -> None:
    from fmmm.collect import collect
    from fmmm.datasets.lerobot import export_lerobot
    from fmmm.datasets.robot import RobotDataset

    source = work / "fmmm_demos"
    collect("pick_place", EPISODES, source, seed=0, workers=1, progress=False)
    dataset = RobotDataset(source)
    expected = {
        key: np.concatenate([dataset.episode(i)[key] for i in range(dataset.num_episodes)])
        for key in ("action", "observation.state", *dataset.camera_keys)
    }
    expected["task"] = np.array(
        [
            dataset.instruction(i)
            for i in range(dataset.num_episodes)
            for _ in range(dataset.episodes[i]["length"])
        ]
    )
    np.savez(work / "fmmm_expected.npz", **expected)
    for name, sizes in EXPORTS.items():
        out = export_lerobot(source, work / f"fmmm_v30_{name}", **sizes)
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        print(f"fmmm export ({name}): {len(files)} files: {', '.join(files)}")
    names = dataset.features["observation.state"]["names"]
    (work / "fmmm_names.json").write_text(json.dumps(names))


def _backends() -> list[str]:
    backends = ["pyav"]
    try:
        import torchcodec.decoders  # noqa: F401  (needs FFmpeg 4-7 shared libraries on the system)

        backends.insert(0, "torchcodec")
    except Exception as exc:  # torchcodec raises RuntimeError/OSError when FFmpeg is missing
        print(f"note: torchcodec does not load here ({type(exc).__name__}); pyav only")
    return backends


def lerobot_load(work: Path) -> None:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    expected = np.load(work / "fmmm_expected.npz")
    names = json.loads((work / "fmmm_names.json").read_text())
    for name in EXPORTS:
        root = work / f"fmmm_v30_{name}"
        for backend in _backends():
            label = f"fmmm v3.0 export ({name}) in LeRobotDataset [{backend}]"
            dataset = LeRobotDataset("fmmm/interop", root=root, video_backend=backend)
            check(
                dataset.num_episodes == EPISODES and len(dataset) == len(expected["action"]),
                f"{label}: {dataset.num_episodes} episodes, {len(dataset)} frames",
            )
            check(dataset.meta.names["observation.state"] == names, f"{label}: state names kept")
            errors, exact = [], True
            for index in range(len(dataset)):
                item = dataset[index]
                exact &= torch.equal(item["action"], torch.from_numpy(expected["action"][index]))
                exact &= torch.equal(
                    item["observation.state"],
                    torch.from_numpy(expected["observation.state"][index]),
                )
                exact &= item["task"] == str(expected["task"][index])
                for key in dataset.meta.video_keys:
                    # (C, H, W) float in [0, 1] -> (H, W, C) uint8
                    frame = (item[key].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
                    errors.append(pixel_error(frame, expected[key][index]))
            check(exact, f"{label}: actions, states and tasks of every frame exact")
            mean = float(np.mean([e[0] for e in errors]))
            check(
                mean < MEAN_PIXEL_ERROR,
                f"{label}: {len(errors)} frames decode, mean |pixel error| {mean:.2f} "
                f"(max {max(e[1] for e in errors)})",
            )
            window = LeRobotDataset(
                "fmmm/interop",
                root=root,
                video_backend=backend,
                delta_timestamps={
                    "action": [0.0, 0.1, 0.2],
                    "observation.images.wrist": [-0.1, 0.0],
                },
            )
            item = window[len(window) // 2]
            check(
                tuple(item["action"].shape) == (3, 7)
                and tuple(item["observation.images.wrist"].shape) == (2, 3, 64, 64),
                f"{label}: delta_timestamps windows (action chunk, previous frame)",
            )


def lerobot_create(work: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(0)
    joints = [f"joint_{i}" for i in range(6)]
    features = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": joints},
        "action": {"dtype": "float32", "shape": (6,), "names": {"motors": joints}},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "observation.images.front": {
            "dtype": "video",
            "shape": (48, 64, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.images.top": {
            "dtype": "image",
            "shape": (32, 32, 3),
            "names": ["height", "width", "channels"],
        },
    }
    root = work / "lerobot_made"
    shutil.rmtree(root, ignore_errors=True)  # create() refuses an existing folder
    dataset = LeRobotDataset.create(
        "lerobot/interop", fps=15, features=features, root=root, robot_type="so100"
    )
    tasks = ["pick the cube", "open the drawer"]
    expected: dict[str, list] = {
        key: [] for key in ("state", "action", "reward", "front", "top", "task")
    }
    yy, xx = np.mgrid[0:48, 0:64]
    for episode in range(3):
        for t in range(10 + 7 * episode):
            # smooth moving gradients: what a camera sees, not noise a codec cannot keep
            front = np.stack(
                [(xx * 4 + t * 3) % 256, (yy * 5 + episode * 40) % 256, ((xx + yy) * 2 + t) % 256],
                -1,
            ).astype(np.uint8)
            top = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            frame = {
                "observation.state": rng.normal(size=6).astype(np.float32),
                "action": rng.normal(size=6).astype(np.float32),
                "next.reward": np.array([rng.random()], dtype=np.float32),
                "observation.images.front": front,
                "observation.images.top": top,
                "task": tasks[episode % 2],
            }
            for key, name in (
                ("state", "observation.state"),
                ("action", "action"),
                ("reward", "next.reward"),
            ):
                expected[key].append(frame[name])
            expected["front"].append(front)
            expected["top"].append(top)
            expected["task"].append(frame["task"])
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    np.savez(work / "lerobot_expected.npz", **{k: np.stack(v) for k, v in expected.items()})
    info = json.loads((root / "meta" / "info.json").read_text())
    video = info["features"]["observation.images.front"]["info"]
    print(
        f"LeRobotDataset.create: {info['codebase_version']}, {info['total_episodes']} episodes, "
        f"{info['total_frames']} frames, video {video['video.codec']} {video['video.pix_fmt']}"
    )


def fmmm_import(work: Path) -> None:
    from fmmm.datasets.lerobot import import_lerobot
    from fmmm.datasets.robot import RobotDataset

    expected = np.load(work / "lerobot_expected.npz")
    dataset = RobotDataset(import_lerobot(work / "lerobot_made", work / "fmmm_imported"))
    label = "LeRobotDataset-made v3.0 in fmmm import"
    columns = {
        key: np.concatenate([dataset.episode(i)[key] for i in range(dataset.num_episodes)])
        for key in dataset.features
    }
    check(
        dataset.num_episodes == 3 and len(dataset) == len(expected["action"]),
        f"{label}: {dataset.num_episodes} episodes, {len(dataset)} frames",
    )
    exact = all(
        np.array_equal(columns[name], expected[key])
        for name, key in (("observation.state", "state"), ("action", "action"))
    )
    exact &= np.array_equal(columns["next.reward"], expected["reward"][:, 0])
    check(exact, f"{label}: states, actions, rewards exact ({columns['action'].dtype})")
    instructions = [dataset.instruction(i) for i in range(dataset.num_episodes)]
    check(
        instructions == ["pick the cube", "open the drawer", "pick the cube"],
        f"{label}: tasks {instructions}",
    )
    check(
        dataset.features["action"]["names"] == {"motors": [f"joint_{i}" for i in range(6)]}
        and dataset.features["observation.state"]["names"] == [f"joint_{i}" for i in range(6)],
        f"{label}: feature names kept",
    )
    check(
        np.array_equal(columns["observation.images.top"], expected["top"]),
        f"{label}: PNG image feature exact",
    )
    mean, worst = pixel_error(columns["observation.images.front"], expected["front"])
    check(
        mean < MEAN_PIXEL_ERROR,
        f"{label}: AV1 video frames, mean |pixel error| {mean:.2f} (max {worst})",
    )


def main() -> int:
    step, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    steps = {
        "fmmm-export": fmmm_export,
        "lerobot-load": lerobot_load,
        "lerobot-create": lerobot_create,
        "fmmm-import": fmmm_import,
    }
    steps[step](work)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
