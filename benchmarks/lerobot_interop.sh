#!/usr/bin/env bash
# LeRobot interop check (not part of CI): fmmm's LeRobot v3.0 export loads in the real
# LeRobotDataset (frames decode, actions exact), and a dataset made with LeRobotDataset.create
# imports into fmmm exactly. Results: docs/datasets.md.
#
#   benchmarks/lerobot_interop.sh [WORK_DIR]
#
# lerobot==0.4.4 pins torch<2.11, so it gets its own venv at $LEROBOT_VENV (default
# ~/.cache/fmmm/lerobot-venv), built on first use and reused after. From PyPI that torch is a CUDA
# build: several GB to download. LeRobot's default decoder, torchcodec, also needs FFmpeg 4-7
# shared libraries on the system (Debian: apt-get install libavcodec59 libavformat59 libavutil57
# libswscale6 libswresample4 libavdevice59 libavfilter8); without them only PyAV is checked.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
fmmm_python=${FMMM_PYTHON:-$repo/.venv/bin/python}
lerobot_venv=${LEROBOT_VENV:-$HOME/.cache/fmmm/lerobot-venv}
work=${1:-$(mktemp -d -t fmmm-lerobot-interop.XXXXXX)}
script=$repo/benchmarks/lerobot_interop.py

if ! "$lerobot_venv/bin/python" -c "import lerobot" 2>/dev/null; then
    echo "building $lerobot_venv (lerobot==0.4.4)"
    "${PYTHON:-python3}" -m venv "$lerobot_venv"  # lerobot 0.4.4 needs Python >= 3.10
    "$lerobot_venv/bin/pip" install --quiet "lerobot==0.4.4"
fi
"$lerobot_venv/bin/python" -c "import lerobot, torch; print('lerobot', lerobot.__version__, 'torch', torch.__version__)"
echo "work dir: $work"

status=0
export HF_HUB_OFFLINE=1  # everything is local; never reach for the Hub
"$fmmm_python" "$script" fmmm-export "$work" || status=1
"$lerobot_venv/bin/python" "$script" lerobot-load "$work" || status=1
"$lerobot_venv/bin/python" "$script" lerobot-create "$work" || status=1
"$fmmm_python" "$script" fmmm-import "$work" || status=1
if [ "$status" -eq 0 ]; then echo "lerobot interop: all checks passed"; else echo "lerobot interop: FAILED"; fi
exit "$status"
