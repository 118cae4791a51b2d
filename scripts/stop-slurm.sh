#!/usr/bin/env bash
# stop-slurm.sh - stop exactly the daemons scripts/start-slurm.sh started.
#
# Reads /run/hpcem-slurm/started ("PIDFILE COMM" lines), cancels all jobs while slurmctld is
# up, then stops slurmd, slurmctld, slurmdbd, mariadbd, munged: SIGTERM to a pid only when
# its pid file still names a live process with that command name, SIGKILL after 15 s.
# Safe to run twice; keeps packages, config and state (job ids continue on the next start).
set -euo pipefail
log() { printf '[stop-slurm] %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "[stop-slurm] ERROR: must run as root" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MANIFEST_DIR=/run/hpcem-slurm
MANIFEST=$MANIFEST_DIR/started
die() { printf '[stop-slurm] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/lib-daemons.sh
. "$HERE/lib-daemons.sh"
[ -s "$MANIFEST" ] || { log "nothing recorded in $MANIFEST: nothing to stop"; exit 0; }

if pid_alive /run/slurm/slurmctld.pid slurmctld && timeout 10 scontrol ping 2>/dev/null | grep -q UP; then
    jobs=$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 60); do
            [ -z "$(squeue -h -t R,CG,PD,CF,S -o '%A' 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi
stop_all "slurmd slurmctld slurmdbd mariadbd munged" 15
rm -f "$MANIFEST"
log "done"
