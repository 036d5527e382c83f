#!/usr/bin/env bash
# Submit slurm/train.sbatch, optionally as a chain of jobs for a training longer than
# the partition's time limit: each job trains until SLURM's advance warning, writes a
# checkpoint and ends; the next (--dependency=singleton: same name and user, one at a
# time) resumes from it; a finished run makes the remaining jobs exit at once.
#
#   bash slurm/submit.sh [--chain N] [sbatch options ...] -- RECIPE.yaml [key=value ...]
#
# The advance signal: unless the sbatch options give --signal, it is the recipe's stop
# lead time from `maestro plan --stop-lead` (one step, plus writing and hashing the
# checkpoint, plus a margin; MAESTRO_STEP_SECONDS: a run's timing/step, else 600 s
# assumed), for the --nodes and --gpus-per-node given here (else MAESTRO_NPROC_PER_NODE,
# else 1 process per node, as train.sbatch counts them). A recipe that does not fit is
# refused here, before anything is queued.
#
# Example: 1 node x 8 GPUs, 4 jobs of 4 hours:
#   bash slurm/submit.sh --chain 4 --nodes 1 --gpus-per-node 8 --time 04:00:00 \
#       -- recipes/qwen3_8b_maestro.yaml
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHAIN=1
SBATCH_ARGS=()
NODES=1 GPUS=${MAESTRO_NPROC_PER_NODE:-1} SIGNAL_GIVEN=0  # processes per node, as train.sbatch
while [ $# -gt 0 ]; do
    case "$1" in
        --chain) CHAIN=$2; shift 2 ;;
        --) shift; break ;;
        --nodes|-N) NODES=$2; SBATCH_ARGS+=("$1" "$2"); shift 2 ;;
        --nodes=*) NODES=${1#--nodes=}; SBATCH_ARGS+=("$1"); shift ;;
        --gpus-per-node) GPUS=$2; SBATCH_ARGS+=("$1" "$2"); shift 2 ;;
        --gpus-per-node=*) GPUS=${1#--gpus-per-node=}; SBATCH_ARGS+=("$1"); shift ;;
        --signal|--signal=*) SIGNAL_GIVEN=1; SBATCH_ARGS+=("$1"); shift ;;
        *) SBATCH_ARGS+=("$1"); shift ;;
    esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--chain N] [sbatch options] -- RECIPE.yaml [key=value ...]" >&2; exit 2; }
case "$CHAIN" in ''|*[!0-9]*|0) echo "error: --chain must be a positive integer" >&2; exit 2 ;; esac

if [ "$SIGNAL_GIVEN" = 0 ]; then
    STEP=()
    if [ -n "${MAESTRO_STEP_SECONDS:-}" ]; then STEP=(--step-seconds "$MAESTRO_STEP_SECONDS"); fi
    LEAD=$("${MAESTRO_PYTHON:-python}" -m maestro_megatron.cli plan "$@" --nodes "$NODES" \
        --gpus-per-node "${GPUS##*:}" "${STEP[@]}" --stop-lead)
    echo "advance signal: --signal=B:USR1@$LEAD (maestro plan --stop-lead)" >&2
    SBATCH_ARGS+=("--signal=B:USR1@$LEAD")
fi

if [ "$CHAIN" -eq 1 ]; then
    sbatch --parsable "${SBATCH_ARGS[@]}" "$HERE/train.sbatch" "$@"
    exit 0
fi
NAME="maestro-$(date +%s)-$$"
for _ in $(seq 1 "$CHAIN"); do
    MAESTRO_CHAINED=1 sbatch --parsable --job-name="$NAME" --dependency=singleton \
        --export=ALL,MAESTRO_CHAINED=1 "${SBATCH_ARGS[@]}" "$HERE/train.sbatch" "$@"
done
