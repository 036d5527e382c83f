#!/usr/bin/env bash
# One-shot GPU check: matmul peak, megatron-core train-step TFLOP/s (bf16,
# FP8 with Transformer Engine), tests/gpu, vLLM sleep/wake + refit, maestro train; one
# results file, under 8 minutes. --dry-run: the same on CPU with tiny shapes (a test runs it).
#   bash bench/gpu_check.sh [--dry-run] [--out FILE] [--layers N] [--seq N]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${MAESTRO_PYTHON:-$repo/.venv/bin/python}"
cd "$repo"
exec "$python" -m bench.gpu_check "$@"
