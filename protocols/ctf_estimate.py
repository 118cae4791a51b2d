"""CTF estimation with hpcem's own estimator: one step per micrograph.

Tile-averaged power spectrum, rotational average (Cython kernel), 1D defocus search and
astigmatism from sector averages; see :mod:`hpcem.ctf.estimate`. The step and register
code here is shared with ``ctf.fit2d`` (:mod:`hpcem.protocols.ctf_fit2d`).

A micrograph that cannot be fitted (NaN/Inf or constant pixels, too small for the tile,
a non-finite fit, a fit at an edge of the search range, a fit score below
``min_fit_score``) is *rejected*: its step raises :class:`~hpcem.errors.ItemRejected`
with the reason, the other micrographs go on, and ``register`` writes only the accepted
CTFs (with a diagnostic PNG each, ``thumbnail``) and lists the rejected micrographs.
"""

from __future__ import annotations

import math

from hpcem.errors import DataFormatError, HpcemError, ItemRejected, ValidationError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

#: Default of ``min_fit_score``, from measurements (see the parameter's help and
#: docs/protocols/ctf_estimate.md): pure noise of 1024 px or more scores up to 0.43,
#: simulated micrographs 0.77–0.94, a real Krios micrograph 0.65.
MIN_FIT_SCORE = 0.5
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


def fit_micrograph(
    strategy: str,
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    options: dict,
    min_fit_score: float,
    diagnostic: str | None,
) -> dict:
    """Fit one micrograph file with ``strategy`` (``"estimate"`` or ``"fit2d"``).

    Raises ItemRejected, naming the micrograph, for a file that cannot be read (truncated
    since the import, a header that disagrees with the optics), NaN/Inf pixels, a
    constant image, a micrograph smaller than the tile, a fit with a non-finite number, a
    fit score below
    ``min_fit_score``, or the estimator's own ``rejection`` (a fit at an edge of the search
    range; ``ctf.estimate``'s sectors disagreeing); the result is always finite
    (and so valid JSON). Writes the diagnostic PNG to ``diagnostic`` (a path relative to
    the project folder, where workers run) when given.
    """
    from hpcem.ctf.estimate import estimate_ctf, load_micrograph, micrograph_defect
    from hpcem.ctf.spectrum import auto_tile_size

    try:
        image, pixel_size_A = load_micrograph(path, pixel_size_A)
    except (DataFormatError, ValidationError) as exc:  # truncated file, wrong header
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    defect = micrograph_defect(image)
    if defect is not None:
        raise ItemRejected(f"micrograph {micrograph_id}: {defect}")
    tile = options.get("tile_size_px") or auto_tile_size(image.shape, pixel_size_A)
    if min(image.shape) < tile:
        raise ItemRejected(
            f"micrograph {micrograph_id}: {image.shape[1]}x{image.shape[0]} px is smaller "
            f"than the {tile}-px tile of the power spectrum"
        )
    if strategy == "fit2d":
        from hpcem.ctf.fit2d import fit_ctf_2d as fit_function
    else:
        fit_function = estimate_ctf
    try:
        fit = fit_function(
            image,
            pixel_size_A,
            voltage_kV=voltage_kV,
            cs_mm=cs_mm,
            amplitude_contrast=amplitude_contrast,
            return_spectrum=True,
            **{**options, "tile_size_px": tile},
        )
    except ValidationError as exc:  # e.g. a band too narrow for this micrograph's tile
        raise ItemRejected(f"micrograph {micrograph_id}: {exc}") from None
    spectrum = fit.pop("spectrum")
    row = {
        "fit_resolution": float(fit["fit_resolution_A"]),
        "phase_shift": float(fit.get("phase_shift", 0.0)),
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
    if fit["rejection"]:
        raise ItemRejected(f"micrograph {micrograph_id}: {fit['rejection']}")
    if diagnostic:
        from hpcem.ctf.diagnostic import diagnostic_image, write_diagnostic_png

        rgb = diagnostic_image(
            spectrum,
            pixel_size_A,
            fit["tile_size_px"],
            row,
            voltage_kV,
            cs_mm,
            amplitude_contrast,
            options.get("res_low_A", 30.0),
            fit["res_high_A"],
        )
        write_diagnostic_png(diagnostic, rgb)
    return {
        "micrograph_id": micrograph_id,
        **row,
        "thumbnail": diagnostic or "",
        "refinement": fit["refinement"],
        "tile_size_px": int(fit["tile_size_px"]),
        "band_high_A": float(fit["band_high_A"]),
        "backends": fit["backends"],
    }


def estimate_one(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    options: dict,
    min_fit_score: float = MIN_FIT_SCORE,
    diagnostic: str | None = None,
) -> dict:
    """Step of ``ctf.estimate``: :func:`fit_micrograph` with :func:`hpcem.ctf.estimate_ctf`."""
    return fit_micrograph(
        "estimate",
        path,
        micrograph_id,
        pixel_size_A,
        voltage_kV,
        cs_mm,
        amplitude_contrast,
        options,
        min_fit_score,
        diagnostic,
    )


def register_ctfs(ctx, estimator: str = "ctf.estimate") -> dict:
    """Controller step: write the accepted CTFs as a set, in micrograph order, with
    ``estimator`` (the protocol name) in every row.

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
            "phase_shift",
            "thumbnail",
        )
    }
    columns["estimator"] = [estimator] * len(rows)
    with ctx.create_set("ctfs", "hpcem.SetOfCTFs") as writer:
        writer.set_optics(micrographs.optics)
        writer.append_columns(columns)
    return {"count": len(rows), "rejected": rejected}


class EstimateCTF(Protocol):
    name = "ctf.estimate"
    label = "Estimate CTF"
    version = "2"
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
            "tile_size_px",
            0,
            min=0,
            max=4096,
            expert=1,
            help="Periodogram tile size (even; 0 = from the pixel size: a power of two "
            "spanning >= 700 Å, 256-2048 px).",
        ),
        Param.bool(
            "astigmatism",
            True,
            help="Fit astigmatism (U, V, angle) from sector averages of the spectrum; the "
            "1D fit is kept when the astigmatic one scores worse or leaves the range.",
        ),
        Param.float(
            "min_fit_score",
            MIN_FIT_SCORE,
            min=-1.0,
            max=1.0,
            help="Reject a micrograph whose fit score (correlation of spectrum and "
            "model in the band, -1..1) is below this (-1 keeps every fit). "
            "Measured with the defaults: pure noise of 1024-2048 px scores up to 0.43 "
            "(0.85-1.5 Å/px), of 512 px (one tile) up to 0.77; simulated micrographs "
            "(SNR 0.1) 0.77-0.94 at 1024-2048 px, 0.68-0.83 at 512 px; a real Krios "
            "micrograph 0.65. See docs/protocols/ctf_estimate.md.",
        ),
    )
    outputs = (Output("ctfs", "hpcem.SetOfCTFs", help="One CTF model per micrograph."),)
    citations = (ROHOU_GRIGORIEFF_2015,)

    def validate(self, ctx) -> list[str]:
        return validate_search(ctx.params)

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        options = {**search_options(p), "astigmatism": p["astigmatism"]}
        return micrograph_steps(
            ctx,
            "hpcem.protocols.ctf_estimate:estimate_one",
            "hpcem.protocols.ctf_estimate:register_ctfs",
            options,
            p["min_fit_score"],
        )


def validate_search(p: dict) -> list[str]:
    """Problems of the search parameters both CTF strategies share."""
    problems = []
    if p["defocus_min_A"] >= p["defocus_max_A"]:
        problems.append("defocus_min_A must be below defocus_max_A")
    if p["tile_size_px"] % 2 or 0 < p["tile_size_px"] < 64:
        problems.append(f"tile_size_px must be 0 or even and >= 64, got {p['tile_size_px']}")
    if p["res_high_A"] and p["res_high_A"] >= p["res_low_A"]:
        problems.append("res_high_A must be below res_low_A (Å: smaller is higher resolution)")
    return problems


def search_options(p: dict) -> dict:
    """The estimator options both CTF strategies share (0 = adapt to the micrograph)."""
    return {
        "defocus_min_A": p["defocus_min_A"],
        "defocus_max_A": p["defocus_max_A"],
        "res_low_A": p["res_low_A"],
        "res_high_A": p["res_high_A"] or None,
        "tile_size_px": p["tile_size_px"] or None,
    }


def micrograph_steps(
    ctx, step_func: str, register_func: str, options: dict, min_fit_score: float
) -> list[Step]:
    """One ``step_func`` step per micrograph of input ``micrographs`` (its PNG under the
    run's ``diagnostics/``), then the controller step ``register_func``."""
    micrographs = ctx.input("micrographs")
    optics = micrographs.optics
    by_group = {int(g): i for i, g in enumerate(optics["optics_group"])}
    paths = micrographs.column("image")
    ids = micrographs.column("id")
    groups = micrographs.column("optics_group")
    steps = []
    for i, (path, mic_id, group) in enumerate(zip(paths, ids, groups)):
        row = by_group[int(group)]
        png = ctx.run_dir / "diagnostics" / f"micrograph_{int(mic_id):06d}.png"
        steps.append(
            Step(
                _step_name(i),
                step_func,
                {
                    "path": ctx.relpath(str(path)),
                    "micrograph_id": int(mic_id),
                    "pixel_size_A": float(optics["pixel_size_A"][row]),
                    "voltage_kV": float(optics["voltage_kV"][row]),
                    "cs_mm": float(optics["spherical_aberration_mm"][row]),
                    "amplitude_contrast": float(optics["amplitude_contrast"][row]),
                    "options": options,
                    "min_fit_score": min_fit_score,
                    "diagnostic": ctx.relpath(str(png)),
                },
            )
        )
    steps.append(
        Step("register", register_func, deps=tuple(s.name for s in steps), controller=True)
    )
    return steps
