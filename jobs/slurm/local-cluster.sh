#!/usr/bin/env bash
# A one-node SLURM on this machine, all state in one folder: for trying the sbatch script and for
# the integration test. Needs the Debian packages slurm-wlm and munge, and root (slurmd runs jobs).
#
#   jobs/slurm/local-cluster.sh start DIR   # then: export SLURM_CONF=DIR/slurm.conf
#   jobs/slurm/local-cluster.sh stop DIR
#
# Ports: SLURMCTLD_PORT and SLURMD_PORT (default 16817, 16818). munged runs privately on
# DIR/munge.socket with the machine's /etc/munge/munge.key.
set -euo pipefail

command=${1:?usage: local-cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: local-cluster.sh start|stop DIR}")

stop() {
    for name in slurmd slurmctld munged; do
        if [[ -s $dir/$name.pid ]]; then
            pid=$(cat "$dir/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/$name.pid"
        fi
    done
}

start() {
    for program in munged slurmctld slurmd sinfo; do
        command -v "$program" >/dev/null || {
            echo "local-cluster.sh: $program not found; install with: apt-get install -y slurm-wlm munge" >&2
            exit 3
        }
    done
    mkdir -p "$dir/state" "$dir/spool"
    local host cpus memory
    host=$(hostname)
    # nproc honours OMP_NUM_THREADS, which Dask sets to 1 in any process that started a LocalCluster.
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=batchclf-local
SlurmctldHost=$host
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    # --force: munged refuses the Debian ownership of /var/log/munge otherwise.
    munged --force --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
        --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 120); do
        state=$(sinfo --noheader --format=%t 2>/dev/null | head -n 1 || true)
        if [[ $state == idle ]]; then
            echo "SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "local-cluster.sh: the node did not become idle (state: ${state:-none}); see $dir/*.log" >&2
    stop
    exit 1
}

case $command in
    start) start ;;
    stop) stop ;;
    *) echo "usage: local-cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
