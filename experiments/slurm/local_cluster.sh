#!/usr/bin/env bash
# A one-node SLURM cluster on this machine: to try a genlab sweep before a real cluster, and for
# the tests that submit real jobs (tests/test_slurm_cluster.py). As root:
#   bash experiments/slurm/local_cluster.sh up      # install where apt-get exists, configure,
#                                                   # start munged, slurmctld, slurmd; idempotent
#   bash experiments/slurm/local_cluster.sh down    # stop what `up` started
#   bash experiments/slurm/local_cluster.sh status
# One partition, `debug`: this machine's CPUs and memory, no GPUs, no accounting. A requeued job
# starts again after 10 s (SLURM waits 120 s by default), and KillWait is 30 s, as SLURM's default.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
STATE=/var/lib/genlab-slurm     # pid files of what `up` started, logs, slurmctld's state
MARK="# written by genlab's experiments/slurm/local_cluster.sh"

die() { echo "local_cluster: $*" >&2; exit 1; }

answers() { timeout 5 sinfo -h -o %T 2>/dev/null | grep -q -E "^(idle|mixed|allocated|completing)$"; }

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return
    command -v apt-get >/dev/null || die "slurmctld/slurmd/munge are not installed and there is no apt-get"
    echo "local_cluster: apt-get install slurmctld slurmd slurm-client munge"
    { timeout 300 apt-get update -qq || true; } >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq \
        slurmctld slurmd slurm-client munge >/dev/null 2>&1 || die "apt-get install failed"
}

configure() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and is not ours: not touching a real cluster's configuration"
    fi
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$STATE/log"
    local host node
    host=$(hostname -s)
    # this machine as slurmd sees it (CPUs, sockets, cores, threads, RealMemory)
    node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/")
    cat > "$CONF.tmp" <<CONF
$MARK
ClusterName=genlab
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it starts again (120 by default)
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# look at pending jobs every second, not every 60 s: a requeued job starts as soon as it may
SchedulerParameters=sched_interval=1
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
KillWait=30
MinJobAge=600
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$CONF.tmp" "$CONF"
}

start() {
    if ! pgrep -x munged >/dev/null; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        touch "$STATE/started-munged"
    fi
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 60); do
        if answers; then
            echo "local_cluster: up: partition debug on $(hostname -s) ($(sinfo -h -o '%c CPUs, %m MB'))"
            return
        fi
        # a node that went down (an earlier unclean stop) comes back
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    die "slurmctld/slurmd did not come up in 60 s; see $STATE/log"
}

stop() {
    [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF" && die "$CONF is not ours: stop that cluster yourself"
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [ -f "$STATE/started-munged" ]; then
        pkill -x munged || true
        rm -f "$STATE/started-munged"
    fi
    for _ in $(seq 30); do
        pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || { echo "local_cluster: down"; return; }
        sleep 1
    done
    die "slurmctld/slurmd still running after 30 s"
}

case "${1:-}" in
    up)
        [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"
        install
        configure
        start
        ;;
    down) stop ;;
    status)
        if answers; then sinfo; else echo "local_cluster: not answering"; exit 1; fi
        ;;
    *) die "usage: $0 up|down|status" ;;
esac
