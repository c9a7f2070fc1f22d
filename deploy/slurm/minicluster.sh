#!/bin/bash
# A throwaway one-node Slurm cluster on loopback, to try the scripts in this directory:
#   deploy/slurm/minicluster.sh start DIR   # munged, slurmctld, slurmd; prints SLURM_CONF=…
#   SLURM_CONF=DIR/slurm.conf sbatch deploy/slurm/forwarder.sbatch
#   deploy/slurm/minicluster.sh stop DIR    # stops what start started (by its pid files)
# Everything (config, keys, sockets, state, logs) lives in DIR, an empty or new directory;
# nothing outside it is touched. Ports are free ones picked at start. The daemons run as
# the current user (SlurmUser = SlurmdUser = you): jobs run as that user too.
# Debian: apt-get install slurm-wlm munge. Exit status 77 means this machine cannot run
# it (a program is missing or a daemon would not start), with the reason on stderr.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2
cannot() { echo "minicluster: $*" >&2; exit 77; }

# wait_for SECONDS DESCRIPTION COMMAND…: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "minicluster: $what: not within the time limit; logs in $dir/log" >&2
            return 1
        fi
        sleep 0.2
    done
}

stop() {
    local name pid
    # jobs first (SIGTERM, then SIGKILL KillWait later): none outlives the cluster
    if [ -f "$dir/run/slurmctld.pid" ] && [ -f "$dir/slurm.conf" ]; then
        export SLURM_CONF=$dir/slurm.conf
        scancel --user="$(id -un)" 2>/dev/null || true
        wait_for 60 "jobs cancelled" sh -c '[ -z "$(squeue --noheader 2>/dev/null)" ]' || true
    fi
    for name in slurmd slurmctld munged; do
        [ -f "$dir/run/$name.pid" ] || continue
        pid=$(cat "$dir/run/$name.pid")
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do  # up to 10 s, then SIGKILL
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$dir/run/$name.pid"
    done
}

case $action in
stop) stop; exit 0 ;;
start) ;;
*) usage ;;
esac

for program in munged mungekey slurmctld slurmd sbatch squeue sinfo scontrol scancel python3; do
    command -v "$program" >/dev/null || cannot "$program is not installed (Debian: apt-get install slurm-wlm munge)"
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# munged insists that every directory above its socket is searchable by all
chmod 755 "$dir"
mkdir -p "$dir/run" "$dir/log" "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"
user=$(id -un)
node=$(hostname -s)

mungekey --create --keyfile="$dir/munge/munge.key" 2>/dev/null \
    || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/run/munge.socket" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" \
    || cannot "munged would not start: $(tail -n 1 "$dir/log/munged.log" 2>/dev/null)"

read -r ctld_port slurmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
# this machine as slurmd sees it (CPUs, sockets, cores, memory), on loopback
hardware=$(slurmd -C | head -n 1 | sed -e "s/^NodeName=[^ ]*//")

cat >"$dir/slurm.conf" <<EOF
ClusterName=minicluster
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/run/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem gets this much per CPU, not the whole node
DefMemPerCPU=512
MailProg=/bin/true
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# no slurmdbd: a line per finished job (its state and exit code) goes here instead
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
# SIGTERM at a time limit, SIGKILL KillWait seconds later
KillWait=30
MinJobAge=60
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
SchedulerParameters=sched_interval=1
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 $hardware Gres=gpu:1 State=UNKNOWN
# jobs may share cores: a forwarder asking for two CPUs and a GPU job fit on a small machine
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
# a GPU in name only (slurmd drops a GPU without a device file): enough for --gres=gpu:1
echo "Name=gpu File=/dev/null" >"$dir/gres.conf"
export SLURM_CONF=$dir/slurm.conf

if ! slurmctld -i 2>"$dir/log/slurmctld.stderr"; then
    stop
    cannot "slurmctld would not start: $(tail -n 1 "$dir/log/slurmctld.stderr")"
fi
if ! slurmd 2>"$dir/log/slurmd.stderr"; then
    stop
    cannot "slurmd would not start: $(tail -n 1 "$dir/log/slurmd.stderr")"
fi
# ready: the node is idle in the partition (a node slurmctld refuses is drained at once)
if ! wait_for 60 "node $node idle" sh -c "sinfo --noheader --node='$node' --format=%t | grep -Eqx 'idle|drain|inval'" \
    || [ "$(sinfo --noheader --node="$node" --format=%t)" != idle ]; then
    sinfo --long --Node >&2 || true
    tail -n 5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    stop
    exit 1
fi
echo "SLURM_CONF=$dir/slurm.conf"
