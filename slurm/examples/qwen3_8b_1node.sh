#!/usr/bin/env bash
# Qwen3-8B MAESTRO on 1 node x 8 GPUs (TP 2 x DP 4 from the recipe; one vLLM engine per
# data-parallel replica), as a chain of four 4-hour jobs on a shared filesystem.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export MAESTRO_PYTHON=${MAESTRO_PYTHON:-python}
bash slurm/submit.sh --chain 4 --nodes 1 --gpus-per-node 8 --cpus-per-task 64 \
    --time 04:00:00 -- recipes/qwen3_8b_maestro.yaml rollout.placement=replica "$@"
