"""Gold-standard FSC, resolution, mask correction and sharpening (``validate.fsc``).

One worker step (:func:`validate_maps`) and a controller ``register`` step. With two half
maps (rows ``half`` 1 and 2 of input ``volumes``) it computes the unmasked FSC and, with
a mask (input ``mask``, or a soft sphere of ``mask_radius_A``), the masked FSC corrected
by phase randomisation (Chen et al. 2013); the resolution is read at 0.143. With input
``reference`` it compares the map (``half`` 0, else the first row) with the reference's
first map and reads the resolution at 0.5. The B-factor is fitted to the Guinier plot of
the (masked) map between ``bfactor_low_res_A`` and the resolution (Rosenthal & Henderson
2003), or ``bfactor_A2`` is applied; the sharpened map is FSC-weighted (half maps) and
low-passed at the resolution. Output ``fsc``: one row per curve, the one reported first;
``volumes``: the sharpened map. All by :mod:`hpcem.validate.fsc`.
"""

from __future__ import annotations

import numpy as np

from hpcem.errors import HpcemError
from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

CHEN_2013 = Citation(
    "Chen2013",
    "@article{Chen2013, author = {Chen, Shaoxia and McMullan, Greg and Faruqi, Abdul R. and "
    "Murshudov, Garib N. and Short, Judith M. and Scheres, Sjors H. W. and Henderson, "
    "Richard}, title = {High-resolution noise substitution to measure overfitting and "
    "validate resolution in 3D structure determination by single particle electron "
    "cryomicroscopy}, journal = {Ultramicroscopy}, volume = {135}, pages = {24--35}, "
    "year = {2013}, doi = {10.1016/j.ultramic.2013.06.004}}",
)
ROSENTHAL_2003 = Citation(
    "Rosenthal2003",
    "@article{Rosenthal2003, author = {Rosenthal, Peter B. and Henderson, Richard}, title = "
    "{Optimal determination of particle orientation, absolute hand, and contrast loss in "
    "single-particle electron cryomicroscopy}, journal = {J. Mol. Biol.}, volume = {333}, "
    "pages = {721--745}, year = {2003}, doi = {10.1016/j.jmb.2003.07.013}}",
)


def validate_maps(
    map1: str, map2: str, mask: str, pixel_size_A: float, mode: str, options: dict, out: dict
) -> dict:
    """Step: FSC curves, resolution, B-factor and the sharpened map (see the module doc).

    ``mode`` is ``"half_maps"`` (map1, map2 = half 1, half 2) or ``"reference"`` (map1 =
    the map, map2 = the reference); ``mask`` "" = none (or the sphere of the options)."""
    from hpcem.io import read_image, write_mrc
    from hpcem.validate import fsc as F

    a, b = read_image(map1), read_image(map2)
    if a.shape != b.shape or a.ndim != 3:
        raise HpcemError(f"maps {map1} and {map2} have shapes {a.shape} and {b.shape}")
    box = a.shape[0]
    if mask:
        m = read_image(mask)
        if m.shape != a.shape:
            raise HpcemError(f"mask {mask} is {m.shape}, the maps {a.shape}")
    elif options["mask_radius_A"] > 0:
        m = F.soft_sphere_mask(
            box, options["mask_radius_A"] / pixel_size_A, options["mask_edge_A"] / pixel_size_A
        )
    else:
        m = None
    curves: dict[str, np.ndarray] = {}
    if mode == "half_maps":
        threshold = F.HALF_MAP_THRESHOLD
        if m is not None:
            res = F.masked_fsc_corrected(a, b, m, pixel_size_A, seed=options.get("seed", 0))
            freq = res["frequency"]
            for key in ("corrected", "unmasked", "masked", "phase_randomised_masked"):
                curves[key] = res[key]
        else:
            freq, curves["unmasked"] = F.fsc_curve(a, b, pixel_size_A)
        volume = 0.5 * (a + b)
    else:
        threshold = F.REFERENCE_THRESHOLD
        freq, curves["reference"] = F.fsc_curve(a, b, pixel_size_A)
        if m is not None:
            _, curves["reference_masked"] = F.fsc_curve(a * m, b * m, pixel_size_A)
            curves = {"reference_masked": curves["reference_masked"], **curves}
        volume = a
    first = next(iter(curves))
    resolution = F.resolution_at(freq, curves[first], threshold)
    masked = volume * m if m is not None else volume
    guinier = None
    if options["auto_bfactor"]:
        low = options["bfactor_low_res_A"]
        if resolution < low:
            guinier = F.guinier_bfactor(masked, pixel_size_A, low, resolution)
            bfactor = guinier["bfactor_A2"]
        else:
            bfactor = 0.0
    else:
        bfactor = options["bfactor_A2"]
    weights = curves[first] if mode == "half_maps" else None
    sharp = F.sharpen(volume, pixel_size_A, bfactor, weights, lowpass_A=resolution)
    write_mrc(out["sharpened"], sharp, pixel_size_A, kind="volume", overwrite=True)
    F.plot_fsc_png(
        out["plot"],
        freq,
        {k.replace("_", " "): v for k, v in curves.items()},
        thresholds=(threshold,),
        title=f"{first.replace('_', ' ')}: {resolution:.2f} Å at {threshold:g}",
    )
    return {
        "mode": mode,
        "threshold": threshold,
        "resolution_A": float(resolution),
        "curves": {
            k: {"fsc": [float(x) for x in v], "resolution_A": F.resolution_at(freq, v, threshold)}
            for k, v in curves.items()
        },
        "frequency": [float(f) for f in freq],
        "bfactor_A2": float(bfactor),
        "guinier": guinier,
        "sharpened": out["sharpened"],
        "plot": out["plot"],
        "masked": m is not None,
        "pixel_size_A": float(pixel_size_A),
        "box_px": int(box),
    }


def register(ctx) -> dict:
    """Controller step: output ``fsc`` (one row per curve) and ``volumes`` (sharpened)."""
    r = ctx.result("validate")
    labels = list(r["curves"])
    with ctx.create_set("fsc", "hpcem.SetOfFSCs") as writer:
        writer.append_columns(
            {
                "label": labels,
                "resolution_A": [r["curves"][k]["resolution_A"] for k in labels],
                "frequency": [r["frequency"]] * len(labels),
                "fsc": [r["curves"][k]["fsc"] for k in labels],
            }
        )
    pixel, box = r["pixel_size_A"], r["box_px"]
    with ctx.create_set("volumes", "hpcem.SetOfVolumes") as writer:
        writer.append_columns(
            {
                "image": [ctx.path(r["sharpened"])],
                "pixel_size_A": [pixel],
                "box_size": [box],
                "half": [0],
            }
        )
    return {
        "resolution_A": r["resolution_A"],
        "threshold": r["threshold"],
        "bfactor_A2": r["bfactor_A2"],
        "curves": labels,
    }


def _maps(ctx) -> tuple[str, str, str, float]:
    """(map1, map2, mode, pixel size) from the inputs; HpcemError naming what is missing."""
    volumes = ctx.input("volumes").read_columns(["image", "half", "pixel_size_A", "box_size"])
    halves = [int(h) for h in volumes["half"]]
    if ctx.inputs.get("reference"):
        ref = ctx.input("reference").read_columns(["image", "pixel_size_A", "box_size"])
        row = halves.index(0) if 0 in halves else 0
        pair = (volumes, row), (ref, 0)
        mode = "reference"
    else:
        if 1 not in halves or 2 not in halves:
            raise HpcemError(
                "input volumes hold no half maps 1 and 2 (give reconstruct.fourier's volumes, "
                "or a reference input to compare one map with another)"
            )
        pair = (volumes, halves.index(1)), (volumes, halves.index(2))
        mode = "half_maps"
    (s1, i1), (s2, i2) = pair
    p1, p2 = float(s1["pixel_size_A"][i1]), float(s2["pixel_size_A"][i2])
    b1, b2 = int(s1["box_size"][i1]), int(s2["box_size"][i2])
    if abs(p1 - p2) > 1e-3 * p1 or b1 != b2:
        raise HpcemError(f"the two maps differ: {b1} px at {p1:g} Å/px and {b2} px at {p2:g} Å/px")
    return str(s1["image"][i1]), str(s2["image"][i2]), mode, p1


class ValidateFSC(Protocol):
    name = "validate.fsc"
    label = "FSC, resolution and sharpening"
    version = "1"
    help = (
        "Fourier shell correlation of two half maps (resolution at 0.143; with a mask, "
        "corrected by phase randomisation) or of a map and a reference (at 0.5); B-factor "
        "from the Guinier plot and the sharpened map."
    )
    inputs = (
        Input("volumes", ("hpcem.SetOfVolumes",), help="Half maps (half 1 and 2), or a map."),
        Input(
            "reference",
            ("hpcem.SetOfVolumes",),
            required=False,
            help="A reference map to compare the map with (FSC at 0.5).",
        ),
        Input(
            "mask",
            ("hpcem.SetOfMasks",),
            required=False,
            help="Solvent mask (1 = protein, soft edge); its first row.",
        ),
    )
    params = (
        Param.float(
            "mask_radius_A",
            0.0,
            min=0.0,
            max=10000.0,
            units="Å",
            help="Without a mask input: a soft sphere of this radius (0 = unmasked).",
        ),
        Param.float(
            "mask_edge_A", 12.0, min=0.0, max=1000.0, units="Å", help="Cosine edge of the sphere."
        ),
        Param.bool("auto_bfactor", True, help="Fit the B-factor to the Guinier plot."),
        Param.float(
            "bfactor_low_res_A",
            10.0,
            min=1.0,
            max=100.0,
            units="Å",
            help="Lowest resolution in the Guinier fit (up to the FSC resolution).",
        ),
        Param.float(
            "bfactor_A2",
            0.0,
            min=-100000.0,
            max=100000.0,
            units="Å²",
            help="B-factor applied without auto_bfactor (negative sharpens).",
        ),
        Param.int(
            "seed",
            0,
            min=0,
            max=2**31 - 1,
            expert=1,
            help="Seed of the phase randomisation of the masked FSC (same seed, same curve).",
        ),
    )
    outputs = (
        Output("fsc", "hpcem.SetOfFSCs", help="FSC curves, the reported one first."),
        Output("volumes", "hpcem.SetOfVolumes", help="The sharpened (FSC-weighted) map."),
    )
    citations = (CHEN_2013, ROSENTHAL_2003)

    def validate(self, ctx) -> list[str]:
        try:
            ctx.input("volumes")
        except HpcemError:
            return []
        try:
            _maps(ctx)
        except HpcemError as exc:
            return [str(exc)]
        return []

    def steps(self, ctx) -> list[Step]:
        map1, map2, mode, pixel = _maps(ctx)
        mask = ""
        if ctx.inputs.get("mask"):
            mask = ctx.relpath(ctx.path(str(ctx.input("mask").column("image")[0])))
        p = ctx.params
        options = {
            k: p[k]
            for k in (
                "mask_radius_A",
                "mask_edge_A",
                "auto_bfactor",
                "bfactor_low_res_A",
                "bfactor_A2",
            )
        }
        if p.get("seed", 0):  # only when set: runs made before the parameter keep their steps
            options["seed"] = p["seed"]
        out = {
            "sharpened": ctx.relpath(str(ctx.run_dir / "sharpened.mrc")),
            "plot": ctx.relpath(str(ctx.run_dir / "fsc.png")),
        }
        return [
            Step(
                "validate",
                "hpcem.protocols.validate_fsc:validate_maps",
                {
                    "map1": ctx.relpath(ctx.path(map1)),
                    "map2": ctx.relpath(ctx.path(map2)),
                    "mask": mask,
                    "pixel_size_A": pixel,
                    "mode": mode,
                    "options": options,
                    "out": out,
                },
            ),
            Step(
                "register",
                "hpcem.protocols.validate_fsc:register",
                deps=("validate",),
                controller=True,
            ),
        ]
