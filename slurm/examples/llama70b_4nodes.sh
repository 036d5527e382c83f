#!/usr/bin/env bash
# Llama-3.1-70B MAESTRO on 4 nodes x 8 GPUs (TP 8 x PP 4 from the recipe, i.e. one
# data-parallel replica and its vLLM engine), requeued on preemption (at most 3 times).
# Set NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME to the interface the nodes share.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export MAESTRO_PYTHON=${MAESTRO_PYTHON:-python} MAESTRO_MAX_RESTARTS=${MAESTRO_MAX_RESTARTS:-3}
bash slurm/submit.sh --nodes 4 --gpus-per-node 8 --cpus-per-task 64 --exclusive \
    --time 24:00:00 -- recipes/llama70b_maestro.yaml rollout.placement=replica "$@"
