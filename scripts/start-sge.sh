#!/usr/bin/env bash
# start-sge.sh - start hpcem's test Grid Engine cell (SGE 8.1.9, Debian 12) on loopback.
#
# Installs gridengine-master/-exec/-client when missing, makes "localhost" the canonical
# host (the real hostname an alias), starts sge_qmaster and sge_execd with an LD_PRELOAD
# shim (SGE binds 0.0.0.0 and has no setting for it; the shim makes that 127.0.0.1), and
# makes sure: root may run jobs (min_uid/min_gid 0), job shells are no login shells, the
# scheduler and accounting run every second, PE "smp" and queue "all.q" (slots = nproc).
# Idempotent; everything started is listed in /run/hpcem-sge/started for stop-sge.sh.
# Do not install slurm-wlm-torque next to it: both ship qsub.
#
# Environment knobs: HPCEM_SGE_SLOTS (nproc), HPCEM_SGE_WAIT (90 s)
set -euo pipefail

log() { printf '[start-sge] %s\n' "$*"; }
die() { printf '[start-sge] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MANIFEST_DIR=/run/hpcem-sge
MANIFEST=$MANIFEST_DIR/started
# shellcheck source=scripts/lib-daemons.sh
. "$HERE/lib-daemons.sh"

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SLOTS=${HPCEM_SGE_SLOTS:-$(nproc)}
WAIT=${HPCEM_SGE_WAIT:-90}
COMMON=$SGE_ROOT/$SGE_CELL/common
QM_SPOOL=/var/spool/gridengine/qmaster
EXEC_SPOOL=/var/spool/gridengine/execd
HOST=localhost
WORK=$(mktemp -d /tmp/hpcem-sge.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------ packages
if ! dpkg-query -W -f='${Status}' gridengine-master 2>/dev/null | grep -q 'install ok installed'; then
    # the package postinst creates the cell from these answers
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $HOST
EOF
fi
ensure_packages gridengine-master gridengine-exec gridengine-client gcc libc6-dev || true
[ -s "$COMMON/bootstrap" ] || die "$COMMON/bootstrap missing: the cell was not created"
build_loopback_shim "$WORK"

# ------------------------------------------------------------------ host names
echo "$HOST" > "$COMMON/act_qmaster"
aliases=$HOST
for h in "$(hostname)" "$(hostname -s 2>/dev/null || true)" "$(hostname -f 2>/dev/null || true)"; do
    [ -n "$h" ] && [ "$h" != "$HOST" ] && case " $aliases " in *" $h "*) ;; *) aliases="$aliases $h";; esac
done
echo "$aliases" > "$COMMON/host_aliases"
chown sgeadmin:sgeadmin "$COMMON/act_qmaster" "$COMMON/host_aliases"

# ------------------------------------------------------------------ qmaster
mkdir -p /run/gridengine && chown sgeadmin:sgeadmin /run/gridengine
if ! pid_alive "$QM_SPOOL/qmaster.pid" sge_qmaster; then
    log "starting sge_qmaster"
    rm -f "$QM_SPOOL/qmaster.pid"
    LD_PRELOAD=$SHIM /usr/sbin/sge_qmaster
    record "$QM_SPOOL/qmaster.pid" sge_qmaster
fi
wait_for 30 "sge_qmaster" qconf -sh || die "qmaster not answering (see $QM_SPOOL/messages)"

# ------------------------------------------------------------------ cell configuration
qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null
qconf -sh 2>/dev/null | grep -qx "$HOST" || qconf -ah "$HOST" >/dev/null
gconf_changed=0
qconf -sconf global > "$WORK/global"
if grep -qE '^min_(uid|gid) +[1-9]' "$WORK/global" || ! grep -qE '^login_shells +none$' "$WORK/global" \
   || ! grep -q 'flush_time=00:00:01' "$WORK/global"; then
    log "global config: min_uid/min_gid 0, login_shells none, accounting flush 1 s"
    sed -i -E 's/^(min_uid|min_gid)( +)[0-9]+/\1\20/; s/^(login_shells +).*/\1none/; s/flush_time=[0-9:]+/flush_time=00:00:01/' "$WORK/global"
    (cd "$WORK" && qconf -Mconf global >/dev/null)   # the file name must be the config name
    gconf_changed=1
fi
qconf -ssconf > "$WORK/sched"
if ! grep -qE '^schedule_interval +0:0:1$' "$WORK/sched"; then
    log "scheduler: runs every second"
    sed -i -E 's/^(schedule_interval +).*/\10:0:1/; s/^(flush_submit_sec +).*/\11/; s/^(flush_finish_sec +).*/\11/' "$WORK/sched"
    qconf -Msconf "$WORK/sched" >/dev/null
fi
if ! qconf -sp smp >/dev/null 2>&1; then
    log "adding parallel environment smp"
    cat > "$WORK/smp" <<'EOF'
pe_name            smp
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     TRUE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
    qconf -Ap "$WORK/smp" >/dev/null
fi
if ! qconf -sq all.q >/dev/null 2>&1; then
    log "adding queue all.q ($SLOTS slots, pe smp)"
    qconf -sq | sed -E "s/^(qname +).*/\1all.q/; s/^(hostlist +).*/\1$HOST/; s/^(slots +).*/\1$SLOTS/; \
        s/^(pe_list +).*/\1smp/; s/^(shell +).*/\1\/bin\/bash/; s/^(load_thresholds +).*/\1NONE/" > "$WORK/all.q"
    qconf -Aq "$WORK/all.q" >/dev/null
fi

# ------------------------------------------------------------------ execd
EXEC_PID=$EXEC_SPOOL/$HOST/execd.pid
if [ "$gconf_changed" = 1 ] && pid_alive "$EXEC_PID" sge_execd; then
    stop_pidfile "$EXEC_PID" sge_execd   # a running execd picks up global config changes late
fi
if ! pid_alive "$EXEC_PID" sge_execd; then
    log "starting sge_execd"
    rm -f "$EXEC_PID"
    LD_PRELOAD=$SHIM /usr/sbin/sge_execd
    wait_for 20 "sge_execd pid file" test -s "$EXEC_PID" || die "sge_execd did not start"
    record "$EXEC_PID" sge_execd
fi
queue_ready() {  # all.q@localhost has a load value and no state flags
    qstat -f -q all.q 2>/dev/null | awk -v q="all.q@$HOST" '$1 == q { ok = ($4 != "-NA-" && NF == 5) } END { exit !ok }'
}
wait_for "$WAIT" "queue all.q@$HOST" queue_ready || { qstat -f >&2; die "queue not ready after ${WAIT}s"; }
log "SGE up: queue all.q ($SLOTS slots), PE smp"
