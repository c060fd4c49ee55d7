"""Robot dataset IO: fmmm's lossless parquet episodes vs the LeRobot v2.1 export (parquet + mp4).

    python benchmarks/robot_dataset_io.py --episodes 20 --out /tmp/bench_io

Collects `--episodes` pick_place demonstrations (or reuses them), exports them to LeRobot, then
measures size on disk, full-pass streaming throughput (frames/s, both cameras decoded) and the
pixel error of the mp4 round trip. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _stream_lerobot(root: Path) -> int:
    """Decode every frame of every camera and read the low-dim parquet, as a trainer would."""
    import json

    import imageio.v2 as imageio
    import pyarrow.parquet as pq

    info = json.loads((root / "meta" / "info.json").read_text())
    cameras = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    frames = 0
    for index in range(info["total_episodes"]):
        table = pq.read_table(root / info["data_path"].format(episode_chunk=0, episode_index=index))
        for key in cameras:
            path = root / info["video_path"].format(
                episode_chunk=0, video_key=key, episode_index=index
            )
            video = np.stack(imageio.mimread(path, memtest=False))
        frames += table.num_rows
        assert len(video) == table.num_rows
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_robot_dataset_io"))
    args = parser.parse_args()

    from fmmm.collect import collect
    from fmmm.datasets.lerobot import export_lerobot
    from fmmm.datasets.robot import RobotDataset

    fmmm_root, lerobot_root = args.out / "fmmm", args.out / "lerobot"
    collect("pick_place", args.episodes, fmmm_root, seed=0, workers=2, progress=False)
    start = time.perf_counter()
    export_lerobot(fmmm_root, lerobot_root)
    export_seconds = time.perf_counter() - start

    rows = []
    dataset = RobotDataset(fmmm_root, cache_episodes=1)
    start = time.perf_counter()
    frames = sum(1 for _ in dataset.iter_frames())
    fmmm_rate = frames / (time.perf_counter() - start)
    start = time.perf_counter()
    frames_lerobot = _stream_lerobot(lerobot_root)
    lerobot_rate = frames_lerobot / (time.perf_counter() - start)
    rows.append(("fmmm parquet (uint8, zstd)", _size(fmmm_root), fmmm_rate, "0 (lossless)"))

    from fmmm.datasets.lerobot import import_lerobot

    back = RobotDataset(import_lerobot(lerobot_root, args.out / "back"))
    errors = [
        np.abs(dataset.episode(i)[k].astype(int) - back.episode(i)[k].astype(int)).max()
        for i in range(dataset.num_episodes)
        for k in dataset.camera_keys
    ]
    rows.append(
        ("LeRobot v2.1 (h264 qp0 yuv444p)", _size(lerobot_root), lerobot_rate, f"max {max(errors)}")
    )

    print(
        f"{args.episodes} pick_place episodes, {frames} frames, 2 cameras 64x64; export {export_seconds:.1f} s\n"
    )
    print("| layout | size on disk | stream frames/s | pixel error |")
    print("| --- | --- | --- | --- |")
    for name, size, rate, error in rows:
        print(f"| {name} | {size / 1e6:.2f} MB | {rate:,.0f} | {error} |")
    print(f"\nstreaming ratio fmmm / LeRobot: {fmmm_rate / lerobot_rate:.1f}x")


if __name__ == "__main__":
    main()
