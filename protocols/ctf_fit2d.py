"""CTF estimation by a full 2D fit of the spectrum: one step per micrograph.

A second, independent strategy next to ``ctf.estimate`` (see :mod:`hpcem.ctf.fit2d`):
the background-subtracted 2D power spectrum is correlated pixel by pixel with the model
CTF² (defocus U, V, angle and optionally a phase shift), exhaustive coarse search then
Nelder–Mead. Same output type, same rejection rules and the same diagnostic PNG as
``ctf.estimate`` (the step and register code is shared with it), so ``ctf.consensus``
can compare the two.
"""

from __future__ import annotations

from hpcem.protocols.ctf_estimate import (
    ROHOU_GRIGORIEFF_2015,
    fit_micrograph,
    micrograph_steps,
    search_options,
    validate_search,
)
from hpcem.protocols.ctf_estimate import register_ctfs as _register

from hpcem.protocol import Input, Output, Param, Protocol

#: Default of ``min_fit_score``: pure noise of 1024-2048 px scores <= 0.028, of 512 px
#: (one tile) up to 0.083; simulated micrographs 0.07-0.26 (512-2048 px, SNR 0.1); a
#: real Krios micrograph 0.082 (per-pixel correlation, see docs/protocols/ctf_fit2d.md).
MIN_FIT_SCORE_2D = 0.05


def fit_one(
    path: str,
    micrograph_id: int,
    pixel_size_A: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    options: dict,
    min_fit_score: float = MIN_FIT_SCORE_2D,
    diagnostic: str | None = None,
) -> dict:
    """Step: :func:`hpcem.protocols.ctf_estimate.fit_micrograph` with the 2D fit."""
    return fit_micrograph(
        "fit2d",
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


def register_ctfs(ctx) -> dict:
    """Controller step: the accepted CTFs as a set (``estimator`` = ``ctf.fit2d``)."""
    return _register(ctx, estimator=FitCTF2D.name)


class FitCTF2D(Protocol):
    name = "ctf.fit2d"
    label = "Fit CTF in 2D"
    help = (
        "Fit defocus U, V, astigmatism angle (and optionally a phase shift) of each "
        "micrograph by correlating its whole 2D power spectrum with the model CTF² "
        "(one step per micrograph). Independent of ctf.estimate's rotational averages, "
        "so that ctf.consensus can compare the two."
    )
    inputs = (Input("micrographs", ("hpcem.SetOfMicrographs",), help="Micrographs to fit."),)
    params = (
        Param.float(
            "defocus_min_A", 3000.0, min=0.0, max=100000.0, units="Å", help="Lowest defocus."
        ),
        Param.float(
            "defocus_max_A", 50000.0, min=100.0, max=200000.0, units="Å", help="Highest defocus."
        ),
        Param.float(
            "res_low_A", 30.0, min=5.0, max=200.0, units="Å", help="Low-resolution end of the band."
        ),
        Param.float(
            "res_high_A",
            0.0,
            min=0.0,
            max=50.0,
            units="Å",
            help="High-resolution end of the band (0 = max(4 Å, 2.5 pixels)); the band "
            "ends earlier where the fitted rings would span fewer than 3 spectrum samples.",
        ),
        Param.int(
            "tile_size_px",
            0,
            min=0,
            max=4096,
            expert=1,
            help="Periodogram tile size (even; 0 = from the pixel size, >= 700 Å).",
        ),
        Param.bool("phase_shift", False, help="Also fit an additional phase shift (phase plates)."),
        Param.float(
            "min_fit_score",
            MIN_FIT_SCORE_2D,
            min=-1.0,
            max=1.0,
            help="Reject a micrograph whose fit score (correlation of the spectrum's "
            "pixels with the model in the band, -1..1; lower than ctf.estimate's, which "
            "averages pixels first) is below this. Measured: pure noise <= 0.028 at "
            "1024-2048 px, up to 0.083 at 512 px; simulated micrographs 0.07-0.26 "
            "(512-2048 px, SNR 0.1), a real Krios micrograph 0.082.",
        ),
    )
    outputs = (Output("ctfs", "hpcem.SetOfCTFs", help="One CTF model per micrograph."),)
    citations = (ROHOU_GRIGORIEFF_2015,)

    def validate(self, ctx) -> list[str]:
        return validate_search(ctx.params)

    def steps(self, ctx):
        p = ctx.params
        options = {**search_options(p), "phase_shift": p["phase_shift"]}
        return micrograph_steps(
            ctx,
            "hpcem.protocols.ctf_fit2d:fit_one",
            "hpcem.protocols.ctf_fit2d:register_ctfs",
            options,
            p["min_fit_score"],
        )
