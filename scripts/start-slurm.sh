#!/usr/bin/env bash
# start-slurm.sh - start hpcem's test SLURM: one host, 4 logical nodes, all on 127.0.0.1.
#
# Debian 12 / SLURM 22.05, run as root, no systemd, no cgroups. Installs slurm-wlm, munge,
# slurmdbd and mariadb-server when missing, writes /etc/slurm/slurm.conf (+ slurmdbd.conf),
# starts munged, mariadbd (unix socket only), slurmdbd, slurmctld and one slurmd per logical
# node (node1..nodeN, ports 17001..), then waits until every node is usable.
# Idempotent: if everything is up with the same config it only checks (under 1 s).
# Loopback only: slurmctld/slurmd/srun use CommunicationParameters=NoInAddrAny,NoCtldInAddrAny;
# slurmdbd (no bind-address setting) runs with an LD_PRELOAD shim that turns bind(0.0.0.0)
# into bind(127.0.0.1); mariadbd runs with --skip-networking.
# Everything started is listed in /run/hpcem-slurm/started; scripts/stop-slurm.sh stops those.
# slurm.conf also names one more node, node<N+1> (node5) at 10.213.0.2 in partition "netns"
# only, State=FUTURE: it exists only while scripts/start-netns-node.sh runs its slurmd inside
# the network namespace hpcem-n5 (a second "host" joined by a veth pair).
#
# Environment knobs:
#   HPCEM_SLURM_NODES (4)  HPCEM_SLURM_CPUS_PER_NODE (nproc)  HPCEM_SLURM_MEM_PER_NODE (MB)
#   HPCEM_SLURM_ACCOUNTING (1: slurmdbd+sacct; 0: none)       HPCEM_SLURM_WAIT (120 s)
set -euo pipefail

log() { printf '[start-slurm] %s\n' "$*"; }
die() { printf '[start-slurm] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib-daemons.sh
. "$HERE/lib-daemons.sh"
MANIFEST_DIR=/run/hpcem-slurm
MANIFEST=$MANIFEST_DIR/started

NODES=${HPCEM_SLURM_NODES:-4}
CPUS=${HPCEM_SLURM_CPUS_PER_NODE:-$(nproc)}
MEM_TOTAL_MB=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
MEM=${HPCEM_SLURM_MEM_PER_NODE:-$(( MEM_TOTAL_MB * 9 / 10 / NODES ))}
ACCT=${HPCEM_SLURM_ACCOUNTING:-1}
WAIT=${HPCEM_SLURM_WAIT:-120}
BASE_PORT=17001
LAST_PORT=$(( BASE_PORT + NODES - 1 ))
NETNS_NODE=node$(( NODES + 1 ))      # slurmd started by scripts/start-netns-node.sh
NETNS_NODE_ADDR=10.213.0.2           # its end of the veth pair (host end 10.213.0.1)
NETNS_NODE_PORT=$(( BASE_PORT + NODES ))
RUN=/run/slurm
STATE=/var/lib/slurm/slurmctld
SPOOL=/var/spool/slurmd
LOGDIR=/var/log/slurm
NODE_TMP=/tmp/slurm-nodes
MYSQL_RUN=/run/mysqld
DB_PASS=hpcem-slurmdbd   # local test database, reachable only through its unix socket

# ------------------------------------------------------------------ packages
PKGS="slurm-wlm slurmctld slurmd slurm-client munge"
[ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server gcc libc6-dev"
pkgs_added=0
if ensure_packages $PKGS; then pkgs_added=1; fi

# ------------------------------------------------------------------ config
mkdir -p /etc/slurm "$RUN" "$STATE" "$SPOOL" "$LOGDIR" "$MANIFEST_DIR" "$NODE_TMP"
chown slurm:slurm "$STATE" "$LOGDIR"
WORK=$(mktemp -d /tmp/hpcem-slurm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [ "$ACCT" = 1 ]; then
    ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5"
else
    ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > "$WORK/slurm.conf" <<EOF
# Written by hpcem scripts/start-slurm.sh: single-host test cluster, everything on 127.0.0.1.
ClusterName=hpcem
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
TmpFS=$NODE_TMP/%n
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=pmi2
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=60
SlurmdTimeout=120
InactiveLimit=0
KillWait=5
OverTimeLimit=0
MinJobAge=600
MaxJobCount=20000
NodeName=node[1-$NODES] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$BASE_PORT-$LAST_PORT] CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
NodeName=$NETNS_NODE NodeHostname=hpcem-n5 NodeAddr=$NETNS_NODE_ADDR Port=$NETNS_NODE_PORT CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=FUTURE
PartitionName=debug Nodes=node[1-$NODES] Default=YES DefaultTime=01:00:00 MaxTime=1-00:00:00 State=UP
PartitionName=long  Nodes=node[1-$NODES] Default=NO  DefaultTime=01:00:00 MaxTime=INFINITE   State=UP
PartitionName=netns Nodes=$NETNS_NODE Default=NO DefaultTime=01:00:00 MaxTime=1-00:00:00 State=UP
EOF
conf_changed=0
if install_if_changed "$WORK/slurm.conf" /etc/slurm/slurm.conf 0644; then
    conf_changed=1; log "wrote /etc/slurm/slurm.conf ($NODES nodes x $CPUS CPUs x ${MEM} MB)"
fi
dbd_changed=0
if [ "$ACCT" = 1 ]; then
    cat > "$WORK/slurmdbd.conf" <<EOF
# Written by hpcem scripts/start-slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    if install_if_changed "$WORK/slurmdbd.conf" /etc/slurm/slurmdbd.conf 0600; then
        dbd_changed=1; log "wrote /etc/slurm/slurmdbd.conf"
    fi
    chown slurm:slurm /etc/slurm/slurmdbd.conf
fi
if [ "$conf_changed" = 1 ] || [ "$dbd_changed" = 1 ] || [ "$pkgs_added" = 1 ]; then
    for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd; done
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
fi
[ "$dbd_changed" = 1 ] && stop_pidfile "$RUN/slurmdbd.pid" slurmdbd

# ------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! pid_alive /run/munge/munged.pid munged; then
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    record /run/munge/munged.pid munged
fi
wait_for 20 "munge" bash -c 'munge -n | unmunge' || die "munge not working (/var/log/munge/munged.log)"

# ------------------------------------------------------------------ accounting
if [ "$ACCT" = 1 ]; then
    build_loopback_shim "$WORK"
    mkdir -p "$MYSQL_RUN" /var/log/mysql
    chown mysql:mysql "$MYSQL_RUN" /var/log/mysql
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "initialising MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
    fi
    if ! pid_alive "$MYSQL_RUN/mysqld.pid" mariadbd; then
        log "starting mariadbd (unix socket only)"
        rm -f "$MYSQL_RUN/mysqld.pid"
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
            --socket="$MYSQL_RUN/mysqld.sock" --pid-file="$MYSQL_RUN/mysqld.pid" \
            --log-error=/var/log/mysql/error.log </dev/null >/dev/null 2>&1 &
        record "$MYSQL_RUN/mysqld.pid" mariadbd
    fi
    wait_for 60 "mariadbd" mariadb-admin --socket="$MYSQL_RUN/mysqld.sock" ping \
        || die "mariadbd not answering (/var/log/mysql/error.log)"
    mariadb --socket="$MYSQL_RUN/mysqld.sock" -e \
        "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
        log "starting slurmdbd (127.0.0.1:6819)"
        rm -f "$RUN/slurmdbd.pid"
        LD_PRELOAD=$SHIM /usr/sbin/slurmdbd
        record "$RUN/slurmdbd.pid" slurmdbd
    fi
    wait_for 60 "slurmdbd" sacctmgr -n list cluster || die "slurmdbd not answering ($LOGDIR/slurmdbd.log)"
fi

# ------------------------------------------------------------------ slurmctld + slurmd
if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    rm -f "$RUN/slurmctld.pid"
    /usr/sbin/slurmctld
    record "$RUN/slurmctld.pid" slurmctld
fi
wait_for 30 "slurmctld" bash -c 'scontrol ping | grep -q UP' || die "slurmctld not responding ($LOGDIR/slurmctld.log)"
for i in $(seq 1 "$NODES"); do
    n=node$i
    mkdir -p "$SPOOL/$n" "$NODE_TMP/$n"; chmod 1777 "$NODE_TMP/$n"
    if ! pid_alive "$RUN/slurmd-$n.pid" slurmd; then
        log "starting slurmd -N $n"
        rm -f "$RUN/slurmd-$n.pid"
        /usr/sbin/slurmd -N "$n"
        record "$RUN/slurmd-$n.pid" slurmd
    fi
done

nodes_ready() {
    [ "$(sinfo -h -N -n "node[1-$NODES]" -o '%N %T' | sort -u | grep -cE ' (idle|mixed|allocated|completing)$')" -eq "$NODES" ]
}
start=$SECONDS; resumed=0
until nodes_ready; do
    if [ $(( SECONDS - start )) -ge 10 ] && [ $resumed = 0 ]; then
        log "resuming nodes left down by an unclean stop"
        scontrol update NodeName="node[1-$NODES]" State=RESUME 2>/dev/null || true
        resumed=1
    fi
    [ $(( SECONDS - start )) -lt "$WAIT" ] || { sinfo -N -l >&2; die "nodes not ready after ${WAIT}s"; }
    sleep 0.5
done
if [ "$ACCT" = 1 ]; then wait_for 30 "sacct" sacct -X -n || die "sacct not working"; fi
log "SLURM up: $NODES nodes, partitions debug (default) and long"
