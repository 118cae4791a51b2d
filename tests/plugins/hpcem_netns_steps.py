"""A protocol whose steps report where they ran: network namespace, addresses, peers.

Used by tests/cluster/test_parsl_multihost.py to show that Parsl-dispatched steps ran on
the SLURM node inside the network namespace hpcem-n5 and reached the controller through the
host end of its veth pair. The test registers this module as a protocol plugin (an entry
point in a dist-info folder of its own), so it is not loaded by other tests.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time

from hpcem.protocol import Param, Protocol, Step


def where(index: int, sleep_s: float = 0.0) -> dict:
    """The network namespace this process is in, its IPv4 addresses and host name, and the
    TCP peers of this process and its parents (the Parsl worker pool's connection to the
    interchange belongs to the manager process, a parent of the worker)."""
    import psutil

    if sleep_s:
        time.sleep(sleep_s)
    me = psutil.Process()
    peers = set()
    for proc in (me, *me.parents()):
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.Error, OSError):
            continue
        peers.update(f"{_ipv4(c.raddr.ip)}:{c.raddr.port}" for c in conns if c.raddr)
    addresses = {
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET
    }
    return {
        "index": index,
        "netns": os.readlink("/proc/self/ns/net"),
        "addresses": sorted(addresses),
        "peers": sorted(peers),
        "hostname": socket.gethostname(),
        "node": os.environ.get("SLURMD_NODENAME", ""),
    }


def _ipv4(address: str) -> str:
    """``::ffff:10.213.0.1`` (an IPv4 peer of a dual-stack socket) as ``10.213.0.1``."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class Where(Protocol):
    name = "test.where"
    label = "Steps that report where they ran"
    params = (
        Param.int("n", 3, min=1, max=100),
        Param.float("sleep_s", 0.0, min=0.0, max=60.0),
    )

    def steps(self, ctx):
        p = ctx.params
        return [
            Step(f"w/{i:03d}", f"{__name__}:where", {"index": i, "sleep_s": p["sleep_s"]})
            for i in range(p["n"])
        ]
