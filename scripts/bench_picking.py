#!/usr/bin/env python
"""Benchmark the picking consensus (:func:`hpcem.picking.consensus`).

``--micrographs`` micrographs (default 1,000) of ``--box`` px, ``--pickers`` pickers (3) with
``--picks`` picks each (500): 80 % of each picker's picks are jittered (sigma 4 px) copies of
shared particle positions, the rest are random. Times the consensus of all micrographs, one
call per micrograph, in this process (the data are made before the clock starts).

Prints one JSON object: micrographs, pickers, picks, radius_px, seconds, ms_per_micrograph,
consensus_picks (kept with min_agree 2), target_s (2.0).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hpcem.picking.consensus import consensus


def make_micrograph(rng, pickers: int, picks: int, box: float) -> tuple[list, list]:
    truth = rng.uniform(0, box, size=(picks, 2))
    sets, scores = [], []
    for _ in range(pickers):
        n_true = int(0.8 * picks)
        pts = truth[rng.permutation(picks)[:n_true]] + rng.normal(0, 4.0, size=(n_true, 2))
        pts = np.concatenate([pts, rng.uniform(0, box, size=(picks - n_true, 2))])
        sets.append(pts)
        scores.append(rng.random(picks))
    return sets, scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--micrographs", type=int, default=1000)
    ap.add_argument("--pickers", type=int, default=3)
    ap.add_argument("--picks", type=int, default=500)
    ap.add_argument("--box", type=float, default=4096.0)
    ap.add_argument("--radius-px", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data = [
        make_micrograph(rng, args.pickers, args.picks, args.box) for _ in range(args.micrographs)
    ]
    t0 = time.perf_counter()
    kept = 0
    for sets, scores in data:
        kept += consensus(sets, scores, args.radius_px, 2)["n_agree"].size
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "micrographs": args.micrographs,
                "pickers": args.pickers,
                "picks": args.picks,
                "radius_px": args.radius_px,
                "seconds": round(seconds, 3),
                "ms_per_micrograph": round(1000 * seconds / max(args.micrographs, 1), 3),
                "consensus_picks": kept,
                "target_s": 2.0,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
