#!/usr/bin/env bash
# Submit slurm/train.sbatch, optionally as a chain of jobs for a training longer than
# the partition's time limit: each job trains until SLURM's advance warning, writes a
# checkpoint and ends; the next (--dependency=singleton: same name and user, one at a
# time) resumes from it; a finished run makes the remaining jobs exit at once.
#
#   bash slurm/submit.sh [--chain N] [sbatch options ...] -- RECIPE.yaml [key=value ...]
#
# Example: 1 node x 8 GPUs, 4 jobs of 4 hours:
#   bash slurm/submit.sh --chain 4 --nodes 1 --gpus-per-node 8 --time 04:00:00 \
#       -- recipes/qwen3_8b_maestro.yaml
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHAIN=1
SBATCH_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --chain) CHAIN=$2; shift 2 ;;
        --) shift; break ;;
        *) SBATCH_ARGS+=("$1"); shift ;;
    esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--chain N] [sbatch options] -- RECIPE.yaml [key=value ...]" >&2; exit 2; }
case "$CHAIN" in ''|*[!0-9]*|0) echo "error: --chain must be a positive integer" >&2; exit 2 ;; esac

if [ "$CHAIN" -eq 1 ]; then
    sbatch --parsable "${SBATCH_ARGS[@]}" "$HERE/train.sbatch" "$@"
    exit 0
fi
NAME="maestro-$(date +%s)-$$"
for _ in $(seq 1 "$CHAIN"); do
    MAESTRO_CHAINED=1 sbatch --parsable --job-name="$NAME" --dependency=singleton \
        --export=ALL,MAESTRO_CHAINED=1 "${SBATCH_ARGS[@]}" "$HERE/train.sbatch" "$@"
done
