#!/usr/bin/env bash
# stop-sge.sh - stop exactly the SGE daemons scripts/start-sge.sh started.
#
# Reads /run/hpcem-sge/started ("PIDFILE COMM" lines), deletes all jobs while sge_qmaster
# is up, then SIGTERMs sge_execd and sge_qmaster (pid file and command name must match),
# SIGKILL after 20 s. Safe to run twice; keeps packages and the cell's configuration.
set -euo pipefail
log() { printf '[stop-sge] %s\n' "$*"; }
die() { printf '[stop-sge] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MANIFEST_DIR=/run/hpcem-sge
MANIFEST=$MANIFEST_DIR/started
# shellcheck source=scripts/lib-daemons.sh
. "$HERE/lib-daemons.sh"
[ -s "$MANIFEST" ] || { log "nothing recorded in $MANIFEST: nothing to stop"; exit 0; }
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default

if pid_alive /var/spool/gridengine/qmaster/qmaster.pid sge_qmaster; then
    jobs=$(timeout 10 qstat -u '*' 2>/dev/null | awk 'NR > 2 {print $1}' | sort -u | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
        log "deleting jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 20 qdel -f $jobs >/dev/null 2>&1 || true
        for _ in $(seq 40); do
            [ -z "$(timeout 10 qstat -u '*' 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi
stop_all "sge_execd sge_qmaster" 20
rm -f "$MANIFEST"
log "done"
