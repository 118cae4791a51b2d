#!/usr/bin/env bash
# stop-netns-node.sh - undo scripts/start-netns-node.sh: cancel the jobs on the namespace's
# node, put it back to FUTURE, stop its slurmd and the slurmctld forwarder (only the pids
# recorded in /run/hpcem-netns/started, command names checked), end what still runs inside
# the namespace hpcem-n5, then delete the veth pair and the namespace (their addresses
# 10.213.0.1 and 10.213.0.2 go with them). Safe to run twice.
set -euo pipefail
log() { printf '[stop-netns-node] %s\n' "$*"; }
die() { printf '[stop-netns-node] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MANIFEST_DIR=/run/hpcem-netns
MANIFEST=$MANIFEST_DIR/started
# shellcheck source=scripts/lib-daemons.sh
. "$HERE/lib-daemons.sh"
NS=hpcem-n5
VETH_HOST=hpcem-n5-host
NODE_ADDR=10.213.0.2

[ -s "$MANIFEST" ] || { log "nothing recorded in $MANIFEST: nothing to stop"; exit 0; }
NODE=$(awk -v a="NodeAddr=$NODE_ADDR" '$1 ~ /^NodeName=/ { for (i = 1; i <= NF; i++) if ($i == a) { sub("NodeName=", "", $1); print $1 } }' /etc/slurm/slurm.conf 2>/dev/null || true)

if [ -n "$NODE" ] && timeout 10 scontrol ping 2>/dev/null | grep -q UP; then
    jobs=$(squeue -h -w "$NODE" -o '%A' 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs on $NODE: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 40); do
            [ -z "$(squeue -h -w "$NODE" -o '%A' 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    scontrol update NodeName="$NODE" State=FUTURE 2>/dev/null \
        || scontrol update NodeName="$NODE" State=DOWN Reason="netns node stopped" 2>/dev/null || true
fi
stop_all "slurmd socat" 15
# whatever the node's jobs left inside the namespace (every process there was started by us)
if ip netns list | grep -qw "$NS"; then
    pids=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${pids// /}" ]; then
        log "ending processes left in $NS: $pids"
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for _ in $(seq 50); do [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] && break; sleep 0.1; done
        pids=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ' || true)
        # shellcheck disable=SC2086
        [ -z "${pids// /}" ] || kill -KILL $pids 2>/dev/null || true
    fi
fi
if ip link show "$VETH_HOST" >/dev/null 2>&1; then
    log "deleting veth $VETH_HOST (and its peer)"
    ip link del "$VETH_HOST"
fi
if ip netns list | grep -qw "$NS"; then
    log "deleting netns $NS"
    ip netns del "$NS"
fi
rm -f "$MANIFEST" "$MANIFEST_DIR/slurm.conf" "$MANIFEST_DIR/hosts" "$MANIFEST_DIR/socat.pid" "$MANIFEST_DIR/socat.log" "$MANIFEST_DIR/err"
log "done"
