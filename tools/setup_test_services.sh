#!/usr/bin/env bash
# Services the tests need beyond .venv: a real SLURM cluster on this machine (two
# emulated nodes, slurm/local_cluster.sh) from Debian's slurm-wlm and munge, and
# the shellcheck linter for the job scripts. Needs root (apt-get) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null ||
   ! command -v shellcheck >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge shellcheck >/dev/null
fi
STATE=$(bash slurm/local_cluster.sh start 2)
echo "slurm: local cluster with 2 nodes up (SLURM_CONF=$STATE/slurm.conf)"
