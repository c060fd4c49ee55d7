#!/usr/bin/env bash
# The prepared GPU check (issue 14): at most ~8 minutes on one H100 / H200.
#   bash benchmarks/gpu.sh            # from the repository root, in the project's environment
# 1. trains configs/model/1b.yaml (~1.2B parameters) with bf16 + torch.compile + FSDP2 on one
#    device through the real Trainer, then the same without compile (the peer), each printing one
#    JSON line: tokens/s, MFU against the published bf16 dense peak, peak GPU memory;
# 2. runs the FSDP / sharded-checkpoint / compile tests on the GPU: the 2-process ones where there
#    are 2+ GPUs (torchrun then puts one process per GPU), the 1-process ones otherwise.
# Record the printed figures, with the date and GPU model, in docs/benchmarks.md (GPU section).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "benchmarks/gpu.sh: no CUDA device visible; nothing to measure" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
out=$(mktemp -d /tmp/fmmm_gpu.XXXXXX)
common=(--config configs/model/1b.yaml --precision bf16 --distributed fsdp
        --batch-size 8 --seq-len 2048 --steps 30 --warmup 10)

echo "== 1B, bf16 + compile + FSDP (1 device)"
timeout 300 torchrun --nproc_per_node 1 --master_port 29650 benchmarks/gpu.py "${common[@]}" \
    --compile --out-dir "$out/compiled" | tail -n 1 | tee "$out/compiled.json"
rm -rf "$out/compiled"

echo "== 1B, bf16 + FSDP, no compile (1 device)"
timeout 150 torchrun --nproc_per_node 1 --master_port 29651 benchmarks/gpu.py "${common[@]}" \
    --out-dir "$out/eager" | tail -n 1 | tee "$out/eager.json"
rm -rf "$out/eager"

echo "== FSDP / sharded checkpoint / compile tests on the GPU ($gpus visible)"
if [ "$gpus" -ge 2 ]; then
    timeout 240 python -m pytest -q tests/train/test_parallel.py
else
    timeout 240 python -m pytest -q tests/train/test_parallel.py -k "sigkill or compile or buckets"
fi
echo "results: $out/compiled.json $out/eager.json"
