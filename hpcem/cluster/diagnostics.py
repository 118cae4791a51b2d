"""Tiny step functions for checking that a site and its workers work (bench, site check)."""

from __future__ import annotations

import os
import time

from hpcem.cluster.schedulers import node_name


def sleep_step(seconds: float = 0.5, index: int = 0) -> dict:
    """Sleep, then say where this ran (node name under SLURM, else host name)."""
    time.sleep(seconds)
    return {
        "index": index,
        "node": node_name(),
        "pid": os.getpid(),
    }
