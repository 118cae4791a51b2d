#!/usr/bin/env bash
# start-netns-node.sh - a second test "host" for the local SLURM: one more slurmd (node5)
# running inside the network namespace hpcem-n5, joined to this host by a veth pair.
#
# Addresses (a /30 of the private 10.213.0.0/16; nothing else is assigned or routed):
#   10.213.0.1/30  host end       hpcem-n5-host  (this host's namespace)
#   10.213.0.2/30  namespace end  hpcem-n5-node  (inside hpcem-n5; NodeAddr of node5)
#   127.0.0.1/8    loopback inside hpcem-n5
# No default route inside the namespace, no IPv6 link-local addresses (addrgenmode none):
# the namespace reaches only 10.213.0.1, and only this host reaches 10.213.0.2.
#
# SLURM: slurm.conf (scripts/start-slurm.sh) names node5 (NodeAddr=10.213.0.2, Port 17005,
# State=FUTURE) in partition "netns" only. slurmctld stays bound to 127.0.0.1; socat, bound to
# the host end 10.213.0.1:6817, forwards the namespace's slurmd to it. The namespace's slurmd
# reads a copy of slurm.conf whose SlurmctldHost is 10.213.0.1. Munge is a unix socket, shared.
#
# Idempotent; everything started is listed in /run/hpcem-netns/started, and
# scripts/stop-netns-node.sh stops it and deletes the namespace and the veth pair.
# Needs: root, the kernel's network namespaces and veth, SLURM up (scripts/start-slurm.sh).
# Exit code 3: the kernel refused the namespace or the veth pair (callers may skip).
set -euo pipefail

log() { printf '[start-netns-node] %s\n' "$*"; }
die() { printf '[start-netns-node] ERROR: %s\n' "$*" >&2; exit "${2:-1}"; }
[ "$(id -u)" -eq 0 ] || die "must run as root"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MANIFEST_DIR=/run/hpcem-netns
MANIFEST=$MANIFEST_DIR/started
# shellcheck source=scripts/lib-daemons.sh
. "$HERE/lib-daemons.sh"

NS=hpcem-n5
VETH_HOST=hpcem-n5-host
VETH_NODE=hpcem-n5-node
HOST_ADDR=10.213.0.1
NODE_ADDR=10.213.0.2
PREFIX=30
CTLD_PORT=6817
WAIT=${HPCEM_NETNS_WAIT:-60}
CONF=$MANIFEST_DIR/slurm.conf
HOSTS=$MANIFEST_DIR/hosts
RUN=/run/slurm

# the node that slurm.conf puts at NODE_ADDR (node5 with the default 4 nodes)
NODE=$(awk -v a="NodeAddr=$NODE_ADDR" '$1 ~ /^NodeName=/ { for (i = 1; i <= NF; i++) if ($i == a) { sub("NodeName=", "", $1); print $1 } }' /etc/slurm/slurm.conf 2>/dev/null || true)
[ -n "$NODE" ] || die "no node with NodeAddr=$NODE_ADDR in /etc/slurm/slurm.conf: run scripts/start-slurm.sh first"
timeout 10 scontrol ping 2>/dev/null | grep -q UP || die "slurmctld is not answering: run scripts/start-slurm.sh first"
command -v socat >/dev/null || ensure_packages socat || true
command -v socat >/dev/null || die "socat is missing"

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }
node_ready() { node_state | grep -qE '^(idle|mixed|allocated|completing)$'; }

if ip netns list | grep -qw "$NS" && pid_alive "$RUN/slurmd-$NODE.pid" slurmd && node_ready; then
    log "already up: $NODE in netns $NS at $NODE_ADDR (host end $HOST_ADDR)"
    exit 0
fi

# ------------------------------------------------------------------ namespace + veth
# the /30 must be ours alone
if ip -4 -o addr show | grep -v " $VETH_HOST " | grep -qE "inet 10\.213\.0\.[0-3]/"; then
    die "10.213.0.0/30 is already assigned on this host (ip -4 addr): not touching it"
fi
mkdir -p "$MANIFEST_DIR"
if ! ip netns list | grep -qw "$NS"; then
    ip netns add "$NS" 2>"$MANIFEST_DIR/err" \
        || die "the kernel refused 'ip netns add $NS': $(cat "$MANIFEST_DIR/err")" 3
fi
grep -qxF "netns $NS" "$MANIFEST" 2>/dev/null || echo "netns $NS" >> "$MANIFEST"
if ! ip link show "$VETH_HOST" >/dev/null 2>&1; then
    ip link add "$VETH_HOST" type veth peer name "$VETH_NODE" netns "$NS" 2>"$MANIFEST_DIR/err" \
        || die "the kernel refused the veth pair $VETH_HOST/$VETH_NODE: $(cat "$MANIFEST_DIR/err")" 3
fi
grep -qxF "veth $VETH_HOST" "$MANIFEST" 2>/dev/null || echo "veth $VETH_HOST" >> "$MANIFEST"
# no IPv6 link-local addresses: the two IPv4 addresses below are the only ones
ip link set dev "$VETH_HOST" addrgenmode none
ip netns exec "$NS" ip link set dev "$VETH_NODE" addrgenmode none
ip addr replace "$HOST_ADDR/$PREFIX" dev "$VETH_HOST"
ip netns exec "$NS" ip addr replace "$NODE_ADDR/$PREFIX" dev "$VETH_NODE"
ip link set dev "$VETH_HOST" up
ip netns exec "$NS" ip link set dev lo up
ip netns exec "$NS" ip link set dev "$VETH_NODE" up
log "netns $NS: $VETH_NODE $NODE_ADDR/$PREFIX <-> $VETH_HOST $HOST_ADDR/$PREFIX"

# ------------------------------------------------------------------ slurmctld forwarder
# slurmctld listens on 127.0.0.1 only; the namespace reaches it at the host end of the veth
if ! pid_alive "$MANIFEST_DIR/socat.pid" socat; then
    log "forwarding $HOST_ADDR:$CTLD_PORT -> 127.0.0.1:$CTLD_PORT (socat)"
    setsid socat "TCP4-LISTEN:$CTLD_PORT,bind=$HOST_ADDR,reuseaddr,fork" "TCP4:127.0.0.1:$CTLD_PORT" \
        </dev/null >/dev/null 2>"$MANIFEST_DIR/socat.log" &
    echo $! > "$MANIFEST_DIR/socat.pid"
    record "$MANIFEST_DIR/socat.pid" socat
fi
wait_for 10 "forwarder" bash -c "ip netns exec $NS bash -c 'exec 3<>/dev/tcp/$HOST_ADDR/$CTLD_PORT'" \
    || die "slurmctld not reachable from $NS at $HOST_ADDR:$CTLD_PORT ($MANIFEST_DIR/socat.log)"

# ------------------------------------------------------------------ slurmd in the namespace
sed -E "s/^SlurmctldHost=.*/SlurmctldHost=localhost($HOST_ADDR)/" /etc/slurm/slurm.conf > "$CONF.new"
mv "$CONF.new" "$CONF"
{ cat /etc/hosts; echo "$NODE_ADDR $NS"; } > "$HOSTS"
mkdir -p "/var/spool/slurmd/$NODE" "/tmp/slurm-nodes/$NODE"; chmod 1777 "/tmp/slurm-nodes/$NODE"
if ! pid_alive "$RUN/slurmd-$NODE.pid" slurmd; then
    log "starting slurmd -N $NODE inside $NS"
    rm -f "$RUN/slurmd-$NODE.pid"
    # nsenter, not 'ip netns exec': that one remounts /sys for the namespace, hiding
    # /sys/fs/cgroup, and slurmd will not start without it. With NoInAddrAny slurmd binds
    # the address its host name resolves to: so its own UTS namespace names it hpcem-n5
    # (node5's NodeHostname) and its own mount namespace has an /etc/hosts that says
    # hpcem-n5 is 10.213.0.2 (no name service is asked; the namespace has no route to one).
    nsenter --net="/run/netns/$NS" unshare --uts --mount --propagation private -- \
        bash -c "mount --bind $HOSTS /etc/hosts && hostname $NS && exec /usr/sbin/slurmd -f $CONF -N $NODE"
    record "$RUN/slurmd-$NODE.pid" slurmd
fi
start=$SECONDS; resumed=0
until node_ready; do
    if [ $resumed = 0 ] && [ $(( SECONDS - start )) -ge 2 ]; then
        # a FUTURE (or down) node becomes usable once its slurmd has registered
        scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
        resumed=1
    fi
    [ $(( SECONDS - start )) -lt "$WAIT" ] || { scontrol -F show node "$NODE" >&2 || true; die "$NODE not ready after ${WAIT}s (/var/log/slurm/slurmd-$NODE.log)"; }
    sleep 0.5
done
log "$NODE up in netns $NS at $NODE_ADDR (partition netns); slurmctld via $HOST_ADDR:$CTLD_PORT"
