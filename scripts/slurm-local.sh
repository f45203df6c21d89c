#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try (and test) xtalloop's cluster path.
#
#   scripts/slurm-local.sh start DIR   write DIR/slurm.conf (free ports), start slurmctld
#                                      and slurmd, wait until the node is idle
#   scripts/slurm-local.sh stop DIR    cancel the cluster's jobs, stop both daemons
#
# Then every SLURM command finds the cluster through its config:
#   export SLURM_CONF=DIR/slurm.conf; sbatch job.sh; squeue
#
# Needs Debian's slurm-wlm (`apt-get install slurm-wlm`). No munge, no cgroups:
# auth/none and proctrack/linuxproc, which is fine on one machine and nowhere else.
# The daemons run as the calling user (root runs jobs for any user; anyone else only
# their own). Everything, state and logs included, stays under DIR.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf
export SLURM_CONF=$conf

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {
    command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install slurm-wlm" >&2; exit 1; }
    local user node
    user=$(id -un)
    node=$(hostname -s)
    mkdir -p "$dir/state" "$dir/spool"
    cat > "$conf" <<EOF
ClusterName=xtalloop-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
# a job past its walltime or cancelled gets SIGTERM, then SIGKILL 2 s later
KillWait=2
MinJobAge=300
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    # -c: a fresh cluster, no jobs from an earlier start
    if ! slurmctld -c -f "$conf" || ! slurmd -f "$conf"; then
        echo "SLURM did not start; see $dir/slurmctld.log and $dir/slurmd.log" >&2
        stop
        exit 1
    fi
    for _ in $(seq 1 60); do
        if [ "$(sinfo -h -n "$node" -o %t 2>/dev/null)" = "idle" ]; then
            echo "SLURM is up: export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.5
    done
    echo "the node did not become idle in 30 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    stop
    exit 1
}

# the daemon named by a pid file, if it still runs
pid_of() { [ -s "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null && cat "$dir/$1.pid"; }

stop() {
    if pid_of slurmctld >/dev/null; then
        scancel --full --partition=debug 2>/dev/null || true
        for _ in $(seq 1 20); do  # let slurmd end the jobs' processes
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    local pids="" pid
    for daemon in slurmd slurmctld; do
        pid=$(pid_of $daemon) && { kill "$pid"; pids="$pids $pid"; }
    done
    # job step daemons of this cluster (they carry its SLURM_CONF) that outlived slurmd
    for pid in $(pgrep -x slurmstepd || true); do
        if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$conf"; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    for pid in $pids; do
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$dir/slurmctld.pid" "$dir/slurmd.pid"
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
