"""Robot dataset IO: fmmm's lossless parquet episodes vs the LeRobot v3.0 export (parquet + mp4).

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
    """Read every data file and decode every video file (all cameras), as a trainer's pass would."""
    import imageio_ffmpeg
    import pyarrow.parquet as pq

    frames = sum(
        pq.read_table(path).num_rows for path in sorted((root / "data").rglob("*.parquet"))
    )
    for camera in sorted((root / "videos").iterdir()):
        decoded = 0
        for path in sorted(camera.rglob("*.mp4")):
            reader = imageio_ffmpeg.read_frames(str(path))
            next(reader)  # metadata
            decoded += sum(1 for _ in reader)
        assert decoded == frames, (camera.name, decoded, frames)
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
    errors = np.concatenate(
        [
            np.abs(dataset.episode(i)[k].astype(int) - back.episode(i)[k].astype(int)).ravel()
            for i in range(dataset.num_episodes)
            for k in dataset.camera_keys
        ]
    )
    error = f"mean {errors.mean():.1f}, p99 {np.percentile(errors, 99):.0f}, max {errors.max()}"
    rows.append(("LeRobot v3.0 (H.264 CRF 23 yuv420p)", _size(lerobot_root), lerobot_rate, error))

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
