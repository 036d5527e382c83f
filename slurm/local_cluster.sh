#!/usr/bin/env bash
# A real SLURM cluster on this one machine, for tests and CI (root, no systemd):
# munged, slurmctld and one slurmd per emulated node (node1..nodeN on 127.0.0.1 with
# distinct ports). Debian's `slurm-wlm` and `munge` packages provide the daemons.
#
#   bash slurm/local_cluster.sh start [NUM_NODES]   # prints the state directory
#   bash slurm/local_cluster.sh stop
#
# State, logs and the generated slurm.conf live in $MAESTRO_SLURM_DIR
# (default /tmp/maestro-slurm). `sinfo` etc. find the cluster through SLURM_CONF.
set -euo pipefail

STATE=${MAESTRO_SLURM_DIR:-/tmp/maestro-slurm}
CONF="$STATE/slurm.conf"
CPUS=$(nproc)

start() {
    local nodes=${1:-2}
    stop >/dev/null 2>&1 || true
    mkdir -p "$STATE"/{ctld,log}
    for i in $(seq 1 "$nodes"); do mkdir -p "$STATE/spool/node$i"; done
    local names="node[1-$nodes]"
    {
        echo "ClusterName=maestro"
        echo "SlurmctldHost=localhost(127.0.0.1)"
        echo "SlurmctldPort=16817"
        echo "SlurmdPort=16818"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "StateSaveLocation=$STATE/ctld"
        echo "SlurmdSpoolDir=$STATE/spool/%n"
        echo "SlurmctldPidFile=$STATE/slurmctld.pid"
        echo "SlurmdPidFile=$STATE/slurmd-%n.pid"
        echo "SlurmctldLogFile=$STATE/log/slurmctld.log"
        echo "SlurmdLogFile=$STATE/log/slurmd-%n.log"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SchedulerType=sched/backfill"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "ReturnToService=2"
        echo "MpiDefault=none"
        echo "JobRequeue=1"
        echo "MinJobAge=600"
        echo "KillWait=10"
        # A job may run 3 minutes past its limit before SLURM kills it: in the
        # chained-job test's short limit, the step under way when the advance signal
        # (--signal=B:USR1@N) arrives, plus the checkpoint, can outlast it on a loaded
        # 2-core machine. The signal itself still comes N s before the nominal limit.
        echo "OverTimeLimit=3"
        echo "SlurmdParameters=config_overrides"
        # a failed parent must not leave chained jobs pending forever
        echo "DependencyParameters=kill_invalid_depend"
        echo "SwitchType=switch/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        for i in $(seq 1 "$nodes"); do
            echo "NodeName=node$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=1000 State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
    } > "$CONF"
    export SLURM_CONF="$CONF"
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    pgrep -x munged >/dev/null || munged --force 2>/dev/null
    slurmctld -f "$CONF"
    for i in $(seq 1 "$nodes"); do
        slurmd -f "$CONF" -N "node$i"
    done
    local deadline=$((SECONDS + 60))
    until [ "$(sinfo -h -o '%t' 2>/dev/null | grep -cE 'idle|mix|alloc')" -ge 1 ] &&
          [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE 'idle|mix|alloc')" -eq "$nodes" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "local cluster: nodes did not come up; see $STATE/log" >&2
            sinfo -N >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    echo "$STATE"
}

stop() {
    export SLURM_CONF="$CONF"
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null; do
        if [ $SECONDS -ge $deadline ]; then pkill -9 -x slurmd || true; pkill -9 -x slurmctld || true; fi
        sleep 0.2
    done
    rm -rf "$STATE/ctld" "$STATE/spool"
}

case "${1:-}" in
    start) start "${2:-2}" ;;
    stop) stop ;;
    *) echo "usage: $0 start [NUM_NODES] | stop" >&2; exit 2 ;;
esac
