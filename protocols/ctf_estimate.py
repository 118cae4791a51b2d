"""CTF estimation with hpcem's own estimator: one step per micrograph.

Tile-averaged power spectrum, rotational average (Cython kernel), 1D defocus search and
2D astigmatism refinement; see :mod:`hpcem.ctf.estimate`.

A micrograph that cannot be fitted (NaN/Inf or constant pixels, a non-finite fit, a fit
score below ``min_fit_score``) is *rejected*: its step raises
:class:`~hpcem.errors.ItemRejected` with the reason, the other micrographs go on, and
``register`` writes only the accepted CTFs and lists the rejected micrographs.
"""

from __future__ import annotations

import math

from hpcem.errors import HpcemError, ItemRejected
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

#: Default of ``min_fit_score``, from measurements (see the parameter's help and
#: docs/protocols/ctf_estimate.md): pure noise scores up to 0.53 with 512-px tiles,
#: simulated micrographs of 1024 px or more 0.65–0.95, a real Krios micrograph 0.76.
MIN_FIT_SCORE = 0.6
_STEP_PREFIX = "estimate/"

ROHOU_GRIGORIEFF_2015 = Citation(
    "Rohou2015",
    "@article{Rohou2015, author = {Rohou, Alexis and Grigorieff, Nikolaus}, title = {CTFFIND4: "
    "Fast and accurate defocus estimation from electron micrographs}, journal = {J. Struct. "
    "Biol.}, volume = {192}, pages = {216--221}, year = {2015}, doi = {10.1016/j.jsb.2015.08.008}}",
)


def _step_name(row: int) -> str:
    """Name of the estimate step of row ``row`` of the input set."""
    return f"{_STEP_PREFIX}{row:06d}"


def _row_of(step_name: str) -> int:
    """Inverse of :func:`_step_name`."""
    return int(step_name[len(_STEP_PREFIX) :])


def estimate_one(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    options: dict,
    min_fit_score: float = MIN_FIT_SCORE,
) -> dict:
    """Step: estimate the CTF of one micrograph file.

    Raises ItemRejected, naming the micrograph, for NaN/Inf pixels, a constant image, a
    fit with a non-finite number or a fit score below ``min_fit_score``; the result is
    always finite (and so valid JSON).
    """
    from hpcem.ctf.estimate import estimate_ctf, load_micrograph, micrograph_defect

    image, pixel_size_A = load_micrograph(path, pixel_size_A)
    defect = micrograph_defect(image)
    if defect is not None:
        raise ItemRejected(f"micrograph {micrograph_id}: {defect}")
    fit = estimate_ctf(
        image,
        pixel_size_A,
        voltage_kV=voltage_kV,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        **options,
    )
    row = {
        "fit_resolution": float(fit["fit_resolution_A"]),
        **{k: float(fit[k]) for k in ("defocus_u", "defocus_v", "defocus_angle", "fit_score")},
    }
    for key, value in row.items():
        if not math.isfinite(value):
            raise ItemRejected(f"micrograph {micrograph_id}: CTF fit gave non-finite {key}")
    if row["fit_score"] < min_fit_score:
        raise ItemRejected(
            f"micrograph {micrograph_id}: CTF fit score {row['fit_score']:.3f} "
            f"below min_fit_score {min_fit_score}"
        )
    return {"micrograph_id": micrograph_id, **row}


def register_ctfs(ctx) -> dict:
    """Controller step: write the accepted CTFs as a set, in micrograph order.

    Returns ``{"count": n_accepted, "rejected": [{"micrograph_id", "reason"}, ...]}``.
    Raises HpcemError when every micrograph was rejected, so the run fails with the
    first reason instead of producing an empty set.
    """
    found = ctx.results(_STEP_PREFIX)
    rejections = ctx.rejections(_STEP_PREFIX)
    micrographs = ctx.input("micrographs")
    ids = micrographs.column("id")
    # Step names carry the row of the input set (see steps()), so the id of a rejected
    # micrograph comes from the input itself, whatever the reason text says.
    rejected = [
        {"micrograph_id": int(ids[_row_of(name)]), "reason": rejections[name]}
        for name in sorted(rejections)
    ]
    if rejected and not found:
        raise HpcemError(f"all {len(rejected)} micrographs were rejected: {rejected[0]['reason']}")
    rows = [found[k] for k in sorted(found)]
    columns = {
        k: [r[k] for r in rows]
        for k in (
            "micrograph_id",
            "defocus_u",
            "defocus_v",
            "defocus_angle",
            "fit_resolution",
            "fit_score",
        )
    }
    with ctx.create_set("ctfs", "hpcem.SetOfCTFs") as writer:
        writer.set_optics(micrographs.optics)
        writer.append_columns(columns)
    return {"count": len(rows), "rejected": rejected}


class EstimateCTF(Protocol):
    name = "ctf.estimate"
    label = "Estimate CTF"
    help = (
        "Estimate defocus and astigmatism of each micrograph (one step per micrograph, "
        "run in parallel). Acquisition parameters come from the input's optics table."
    )
    inputs = (Input("micrographs", ("hpcem.SetOfMicrographs",), help="Micrographs to fit."),)
    params = (
        Param.float(
            "defocus_min_A",
            3000.0,
            min=0.0,
            max=100000.0,
            units="Å",
            help="Lowest defocus searched.",
        ),
        Param.float(
            "defocus_max_A",
            50000.0,
            min=100.0,
            max=200000.0,
            units="Å",
            help="Highest defocus searched.",
        ),
        Param.float(
            "res_low_A",
            30.0,
            min=5.0,
            max=200.0,
            units="Å",
            help="Low-resolution end of the fit band.",
        ),
        Param.float(
            "res_high_A",
            0.0,
            min=0.0,
            max=50.0,
            units="Å",
            help="High-resolution end of the fit band (0 = max(4 Å, 2.5 pixels)).",
        ),
        Param.int(
            "tile_size_px", 512, min=64, max=4096, expert=1, help="Periodogram tile size (even)."
        ),
        Param.bool(
            "astigmatism", True, help="Refine astigmatism (U, V, angle) on the 2D spectrum."
        ),
        Param.float(
            "min_fit_score",
            MIN_FIT_SCORE,
            min=-1.0,
            max=1.0,
            help="Reject a micrograph whose fit score (correlation of spectrum and "
            "model in the band, -1..1) is below this (-1 keeps every fit). "
            "Measured with 512-px tiles and the default band: pure noise scores "
            "0.31-0.53 (132 images, 1.0-1.5 Å/px; 0.56 at 0.85 Å/px), a constant "
            "image 0; simulated micrographs 0.65-0.95 (1024-2048 px, SNR 0.1), "
            "0.59-0.81 at 512 px (one tile), a real Krios micrograph 0.76. "
            "Smaller tiles or pixels raise the noise scores (256-px tiles: up to "
            "0.65); raise this with them. See docs/protocols/ctf_estimate.md.",
        ),
    )
    outputs = (Output("ctfs", "hpcem.SetOfCTFs", help="One CTF model per micrograph."),)
    citations = (ROHOU_GRIGORIEFF_2015,)

    def validate(self, ctx) -> list[str]:
        p = ctx.params
        problems = []
        if p["defocus_min_A"] >= p["defocus_max_A"]:
            problems.append("defocus_min_A must be below defocus_max_A")
        if p["tile_size_px"] % 2:
            problems.append(f"tile_size_px must be even, got {p['tile_size_px']}")
        if p["res_high_A"] and p["res_high_A"] >= p["res_low_A"]:
            problems.append("res_high_A must be below res_low_A (Å: smaller is higher resolution)")
        return problems

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        micrographs = ctx.input("micrographs")
        optics = micrographs.optics
        by_group = {int(g): i for i, g in enumerate(optics["optics_group"])}
        paths = micrographs.column("image")
        ids = micrographs.column("id")
        groups = micrographs.column("optics_group")
        options = {
            "defocus_min_A": p["defocus_min_A"],
            "defocus_max_A": p["defocus_max_A"],
            "res_low_A": p["res_low_A"],
            "res_high_A": p["res_high_A"] or None,
            "tile_size_px": p["tile_size_px"],
            "astigmatism": p["astigmatism"],
        }
        steps = []
        for i, (path, mic_id, group) in enumerate(zip(paths, ids, groups)):
            row = by_group[int(group)]
            steps.append(
                Step(
                    _step_name(i),
                    "hpcem.protocols.ctf_estimate:estimate_one",
                    {
                        "path": ctx.relpath(str(path)),
                        "micrograph_id": int(mic_id),
                        "pixel_size_A": float(optics["pixel_size_A"][row]),
                        "voltage_kV": float(optics["voltage_kV"][row]),
                        "cs_mm": float(optics["spherical_aberration_mm"][row]),
                        "amplitude_contrast": float(optics["amplitude_contrast"][row]),
                        "options": options,
                        "min_fit_score": p["min_fit_score"],
                    },
                )
            )
        steps.append(
            Step(
                "register",
                "hpcem.protocols.ctf_estimate:register_ctfs",
                deps=tuple(s.name for s in steps),
                controller=True,
            )
        )
        return steps
