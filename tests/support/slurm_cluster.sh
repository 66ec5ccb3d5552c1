#!/usr/bin/env bash
# A real Slurm cluster on this machine for the integration tests: slurmctld, munged and one slurmd
# per fake node (node1..nodeN on 127.0.1.i), from Debian's packages, as root, without systemd.
#
#   tests/support/slurm_cluster.sh up      # install what is missing, write the config, start
#   tests/support/slurm_cluster.sh status
#   tests/support/slurm_cluster.sh stop    # cancel the jobs, stop the daemons (by PID file)
#
# `up` returns once every node is idle, and is idempotent: running daemons are kept while the config
# is unchanged, and restarted when it changed (another LSC_NODES, say). The config is not written
# to /etc/slurm, so a machine's own Slurm config is never touched; the client commands find it
# through SLURM_CONF, which `up` prints:
#   export SLURM_CONF=/tmp/xmod-slurm/slurm.conf; sbatch --nodes=2 ...
#
# Knobs: LSC_BASE (/tmp/xmod-slurm: config, state, spool, logs, PID files), LSC_NODES (2),
# LSC_CPUS (cores advertised per node, default all of them: the fake nodes share the real cores),
# LSC_MEM_MB (80% of RAM per node), LSC_PARTITION (debug). They are deliberately not SLURM_*:
# sbatch and srun read SLURM_* variables as options, so an exported knob would change every job.
set -euo pipefail

LSC_BASE=${LSC_BASE:-/tmp/xmod-slurm}
LSC_NODES=${LSC_NODES:-2}
LSC_CPUS=${LSC_CPUS:-$(nproc)}
LSC_MEM_MB=${LSC_MEM_MB:-$(awk '/MemTotal/{printf "%d", $2/1024*0.8}' /proc/meminfo)}
LSC_PARTITION=${LSC_PARTITION:-debug}
export SLURM_CONF=$LSC_BASE/slurm.conf
HOST=$(hostname -s)
NODES=$(seq -f node%g 1 "$LSC_NODES")

log() { echo "[slurm-cluster] $*" >&2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

do_install() {
  local tool missing=0
  for tool in slurmctld slurmd sbatch munged; do command -v "$tool" >/dev/null || missing=1; done
  [ "$missing" = 0 ] && return 0
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Without systemd the packages' postinst cannot start the services ("could not determine current
  # runlevel"): harmless, the daemons are started below.
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  local i nodes_lines=""
  for i in $(seq 1 "$LSC_NODES"); do
    nodes_lines+="NodeName=node$i NodeHostname=node$i NodeAddr=127.0.1.$i Port=$((6917 + i))"
    nodes_lines+=" CPUs=$LSC_CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$LSC_CPUS"
    nodes_lines+=" ThreadsPerCore=1 RealMemory=$LSC_MEM_MB State=UNKNOWN"$'\n'
  done
  cat <<EOF
# Written by tests/support/slurm_cluster.sh: one machine, no cgroups, no accounting.
ClusterName=xmodtest
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
# cred_expire also holds a requeued job back (default 120 s): short, so requeue tests are quick.
AuthInfo=cred_expire=5
CredType=cred/munge
SlurmUser=slurm
SlurmctldPort=6817
StateSaveLocation=$LSC_BASE/ctld
SlurmdSpoolDir=$LSC_BASE/d-%n
SlurmctldPidFile=$LSC_BASE/run/slurmctld.pid
SlurmdPidFile=$LSC_BASE/run/slurmd-%n.pid
SlurmctldLogFile=$LSC_BASE/log/slurmctld.log
SlurmdLogFile=$LSC_BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: processes are tracked by parentage, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (default 60) so a requeued job starts once eligible.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The fake nodes advertise cores they share; without this they would drain for "low CPUs".
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
# A finished job's state, exit code and restarts stay in scontrol's view for 5 minutes.
MinJobAge=300
$nodes_lines
PartitionName=$LSC_PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

do_config() {
  mkdir -p "$LSC_BASE"/{ctld,log,run}
  chown slurm:slurm "$LSC_BASE"/{ctld,log,run}
  write_config > "$SLURM_CONF.new"
  if cmp -s "$SLURM_CONF.new" "$SLURM_CONF"; then
    rm "$SLURM_CONF.new"
    return 0
  fi
  if alive "$LSC_BASE/run/slurmctld.pid"; then
    log "config changed: restarting the cluster"
    do_stop
  fi
  mv "$SLURM_CONF.new" "$SLURM_CONF"
}

start_munge() {
  alive /run/munge/munged.pid && return 0
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "munged did not come up"
  return 1
}

do_start() {
  local node
  start_munge
  # -c: a clean state, so no job or drained node of an earlier cluster comes back.
  alive "$LSC_BASE/run/slurmctld.pid" || slurmctld -f "$SLURM_CONF" -c -i
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  for node in $NODES; do
    alive "$LSC_BASE/run/slurmd-$node.pid" && continue
    mkdir -p "$LSC_BASE/d-$node"
    # The nodes' names must resolve: jobs rendezvous at the first node's hostname.
    grep -q "[[:space:]]$node\$" /etc/hosts || echo "127.0.1.${node#node} $node" >> /etc/hosts
    # Debian builds Slurm with MULTIPLE_SLURMD, so `slurmd -N` runs several nodes on one machine.
    # Where allowed, each slurmd gets its own UTS namespace, so `hostname` in a task names its node.
    if unshare -u true 2>/dev/null; then
      unshare -u sh -c "hostname $node && exec slurmd -f '$SLURM_CONF' -N $node"
    else
      slurmd -f "$SLURM_CONF" -N "$node"
    fi
  done
  for _ in $(seq 150); do
    if [ "$(sinfo -h -o %t | sort -u | tr -d '\n')" = idle ]; then
      log "up: $LSC_NODES nodes idle; client commands need: export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.2
  done
  log "nodes not idle after 30 s"
  sinfo -N -l || true
  tail -n 30 "$LSC_BASE"/log/*.log || true
  return 1
}

stop_pidfile() {
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "PID $pid ($1) ignored SIGTERM: SIGKILL"
      kill -KILL "$pid"
    fi
  fi
  rm -f "$1"
}

do_stop() {
  local f jobs
  # Jobs first, so that their slurmstepd processes end with the daemons that started them.
  if [ -f "$SLURM_CONF" ] && alive "$LSC_BASE/run/slurmctld.pid"; then
    mapfile -t jobs < <(squeue -h -o %i 2>/dev/null || true)
    if [ "${#jobs[@]}" -gt 0 ]; then
      scancel "${jobs[@]}" 2>/dev/null || true
      for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  for f in "$LSC_BASE"/run/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
  stop_pidfile "$LSC_BASE/run/slurmctld.pid"
  stop_pidfile /run/munge/munged.pid
  log "stopped"
}

do_status() {
  local f
  for f in "$LSC_BASE"/run/*.pid /run/munge/munged.pid; do
    [ -e "$f" ] && echo "$f: $(cat "$f") $(alive "$f" && echo alive || echo dead)"
  done
  [ -f "$SLURM_CONF" ] || { echo "no cluster configured in $LSC_BASE"; return 1; }
  scontrol ping && sinfo -N -l && squeue
}

case "${1:-}" in
  up) do_install; do_config; do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) echo "usage: $0 up|stop|status" >&2; exit 2 ;;
esac
