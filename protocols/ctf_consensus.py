"""CTF consensus (Scipion's "CTF discrepancy"): keep micrographs whose two CTFs agree.

Two ``hpcem.SetOfCTFs`` of the same micrographs (from any two estimators: ctf.estimate,
ctf.fit2d, imported CTFFIND results) are matched by ``micrograph_id``. For each pair the
*consensus resolution* is computed exactly (:mod:`hpcem.ctf.consensus`): the resolution
at which the two CTFs' phases first differ by 90° in some direction. A micrograph is
accepted when that resolution is at least as fine as ``resolution_A`` (numerically
``consensus_resolution <= resolution_A``) and it passes the optional filters on the
first set's defocus, astigmatism and fit resolution; the other micrographs (and those
without a partner) go to ``rejected`` with their reason. Both outputs are CTFs of the
first input (``ctfs``), with ``consensus_resolution`` filled.
"""

from __future__ import annotations

import numpy as np

from hpcem.errors import HpcemError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

SCIPION_2016 = Citation(
    "delaRosaTrevin2016",
    "@article{delaRosaTrevin2016, author = {de la Rosa-Trevín, J. M. and Quintana, A. and "
    "del Cano, L. and Zaldívar, A. and Foche, I. and Gutiérrez, J. and Gómez-Blanco, J. and "
    "Burguet-Castell, J. and Cuenca-Alba, J. and Abrishami, V. and Vargas, J. and Otón, J. "
    "and Sharov, G. and Vilas, J. L. and Navas, J. and Conesa, P. and Kazemi, M. and "
    "Marabini, R. and Sorzano, C. O. S. and Carazo, J. M.}, title = {Scipion: A software "
    "framework toward integration, reproducibility and validation in 3D electron "
    "microscopy}, journal = {J. Struct. Biol.}, volume = {195}, pages = {93--99}, "
    "year = {2016}, doi = {10.1016/j.jsb.2016.04.010}}",
)


def _filter_reasons(p: dict, row: dict, resolution_A: float) -> list[str]:
    """Why a matched micrograph is rejected (empty: accepted)."""
    reasons = []
    if not resolution_A <= p["resolution_A"]:
        reasons.append(
            f"CTFs differ by 90° in phase at {resolution_A:.1f} Å, coarser than "
            f"resolution_A {p['resolution_A']:g} Å"
        )
    u, v = float(row["defocus_u"]), float(row["defocus_v"])
    if p["defocus_min_A"] and min(u, v) < p["defocus_min_A"]:
        reasons.append(f"defocus {min(u, v):.0f} Å below defocus_min_A {p['defocus_min_A']:g}")
    if p["defocus_max_A"] and max(u, v) > p["defocus_max_A"]:
        reasons.append(f"defocus {max(u, v):.0f} Å above defocus_max_A {p['defocus_max_A']:g}")
    if p["max_astigmatism_A"] and abs(u - v) > p["max_astigmatism_A"]:
        reasons.append(
            f"astigmatism {abs(u - v):.0f} Å above max_astigmatism_A {p['max_astigmatism_A']:g}"
        )
    fit_res = float(row["fit_resolution"])
    if p["max_fit_resolution_A"] and not fit_res <= p["max_fit_resolution_A"]:
        reasons.append(
            f"fit resolution {fit_res:.1f} Å coarser than max_fit_resolution_A "
            f"{p['max_fit_resolution_A']:g}"
        )
    return reasons


def compare(ctx) -> dict:
    """Controller step: match, compute consensus resolutions, write both outputs.

    Returns ``{"accepted": n, "rejected": [{"micrograph_id", "reason"}, ...],
    "unmatched_other": [ids only in other_ctfs]}``.
    """
    from hpcem.ctf.consensus import consensus_resolution_A, single_optics_value

    first, other = ctx.input("ctfs"), ctx.input("other_ctfs")
    p = ctx.params
    columns = first.read_columns()
    other_cols = other.read_columns(
        ["micrograph_id", "defocus_u", "defocus_v", "defocus_angle", "phase_shift"]
    )
    voltage = single_optics_value(first.optics, "voltage_kV")
    ac_a = single_optics_value(first.optics, "amplitude_contrast")
    ac_b = single_optics_value(other.optics, "amplitude_contrast")

    other_row: dict[int, int] = {}
    duplicates = set()
    for j, mid in enumerate(other_cols["micrograph_id"]):
        if int(mid) in other_row:
            duplicates.add(int(mid))
        other_row.setdefault(int(mid), j)
    mic_ids = [int(m) for m in columns["micrograph_id"]]
    seen: set[int] = set()
    n = len(mic_ids)
    partner = np.full(n, -1, dtype=np.intp)
    reasons: list[list[str]] = [[] for _ in range(n)]
    for i, mid in enumerate(mic_ids):
        if mid in seen:
            reasons[i].append(f"micrograph {mid} has several CTFs in ctfs (this one is a repeat)")
        elif mid in duplicates:
            reasons[i].append(f"micrograph {mid} has several CTFs in other_ctfs")
        elif mid not in other_row:
            reasons[i].append(f"micrograph {mid} has no CTF in other_ctfs")
        else:
            partner[i] = other_row[mid]
        seen.add(mid)
    matched = partner >= 0
    resolution = np.full(n, np.nan)
    if matched.any():
        keys = ("defocus_u", "defocus_v", "defocus_angle", "phase_shift")
        a = {k: np.asarray(columns[k], dtype=np.float64)[matched] for k in keys}
        b = {k: np.asarray(other_cols[k], dtype=np.float64)[partner[matched]] for k in keys}
        resolution[matched] = consensus_resolution_A(a, b, voltage, ac_a, ac_b)
    for i in np.flatnonzero(matched):
        row = {k: columns[k][i] for k in ("defocus_u", "defocus_v", "fit_resolution")}
        reasons[i] += _filter_reasons(p, row, float(resolution[i]))
    accepted = np.array([not r for r in reasons], dtype=bool)
    columns["consensus_resolution"] = resolution.astype(np.float32)

    for name, mask in (("accepted", accepted), ("rejected", ~accepted)):
        with ctx.create_set(name, "hpcem.SetOfCTFs") as writer:
            writer.set_optics(first.optics)
            if mask.any():
                writer.append_columns({k: _take(col, mask) for k, col in columns.items()})
    rejected = [
        {"micrograph_id": mic_ids[i], "reason": "; ".join(reasons[i])}
        for i in np.flatnonzero(~accepted)
    ]
    if n and not accepted.any() and not matched.any():
        raise HpcemError(f"no micrograph of ctfs has a CTF in other_ctfs: {rejected[0]['reason']}")
    finite = resolution[np.isfinite(resolution)]
    return {
        "accepted": int(accepted.sum()),
        "rejected": rejected,
        "unmatched_other": sorted(set(other_row) - set(mic_ids)),
        "median_consensus_resolution_A": float(np.median(finite)) if finite.size else None,
    }


def _take(column, mask):
    if isinstance(column, np.ndarray):
        return column[mask]
    return [x for x, keep in zip(column, mask) if keep]


class CTFConsensus(Protocol):
    name = "ctf.consensus"
    label = "CTF consensus"
    help = (
        "Compare two CTF sets of the same micrographs (e.g. ctf.estimate and ctf.fit2d): "
        "per micrograph, the resolution at which the two CTFs' phases first differ by 90°; "
        "accept the micrographs whose two estimates agree to resolution_A or better."
    )
    inputs = (
        Input("ctfs", ("hpcem.SetOfCTFs",), help="CTFs kept in the outputs."),
        Input("other_ctfs", ("hpcem.SetOfCTFs",), help="CTFs of the same micrographs to compare."),
    )
    params = (
        Param.float(
            "resolution_A",
            15.0,
            min=0.5,
            max=1000.0,
            units="Å",
            help="Accept a micrograph when its two CTFs agree (phase difference < 90° in "
            "every direction) up to this resolution or finer: consensus_resolution <= "
            "resolution_A.",
        ),
        Param.float(
            "defocus_min_A", 0.0, min=0.0, units="Å", help="Reject defocus U or V below (0 = off)."
        ),
        Param.float(
            "defocus_max_A", 0.0, min=0.0, units="Å", help="Reject defocus U or V above (0 = off)."
        ),
        Param.float(
            "max_astigmatism_A",
            0.0,
            min=0.0,
            units="Å",
            help="Reject |U - V| above this (0 = off).",
        ),
        Param.float(
            "max_fit_resolution_A",
            0.0,
            min=0.0,
            units="Å",
            help="Reject a fit resolution coarser than this (0 = off).",
        ),
    )
    outputs = (
        Output("accepted", "hpcem.SetOfCTFs", help="CTFs (of ctfs) that pass."),
        Output(
            "rejected", "hpcem.SetOfCTFs", help="CTFs (of ctfs) that do not, or lack a partner."
        ),
    )
    citations = (SCIPION_2016,)

    def validate(self, ctx) -> list[str]:
        from hpcem.ctf.consensus import check_same_optics

        p = ctx.params
        problems = []
        if p["defocus_min_A"] and p["defocus_max_A"] and p["defocus_min_A"] >= p["defocus_max_A"]:
            problems.append("defocus_min_A must be below defocus_max_A")
        try:
            first, other = ctx.input("ctfs"), ctx.input("other_ctfs")
        except HpcemError:
            return problems  # missing inputs are reported by the framework
        problems += check_same_optics(first.optics, other.optics, ("ctfs", "other_ctfs"))
        return problems

    def steps(self, ctx) -> list[Step]:
        return [Step("compare", "hpcem.protocols.ctf_consensus:compare", controller=True)]
