"""Post-processing of two half maps with ``relion_postprocess`` (``relion.postprocess``).

One worker step (:func:`postprocess`): the two half maps of input ``volumes`` (rows with
``half`` 1 and 2) and the optional ``mask`` are linked into the run's ``relion/``
folder and ``relion_postprocess`` computes the gold-standard FSC (with a mask: the
masked, unmasked, phase-randomised and corrected curves), estimates or applies the
B-factor and writes the sharpened map. The ``register`` step writes output ``fsc`` (one
row per curve RELION wrote, read by :func:`hpcem.convert.relion_results.read_postprocess`:
``frequency`` in 1/Å, ``resolution_A`` by RELION's 0.143 rule, RELION's own
``_rlnFinalResolution`` for ``corrected``; the curve RELION reports — ``corrected`` with
a mask, else ``unmasked`` — first) and ``volumes`` (the sharpened map, and the masked
one with a mask).

Without a mask RELION 3.1.3 writes its map and ``postprocess.star``, then exits 1 while
plotting the masked FSC it did not compute (``MetaDataTable::addToCPlot2D ERROR: cannot
find y-axis label``); that exit, and only that one with both files written, is a
warning in the step's result.
"""

from __future__ import annotations

from pathlib import Path

from hpcem.errors import DataFormatError, HpcemError
from hpcem.protocol import Input, Output, Param, Protocol, Step
from hpcem.relion import RELION_CITATIONS

PROGRAM = "relion_postprocess"
ROOT = "postprocess"
#: RELION 3.1.3's known failure after an unmasked run has written its results.
_UNMASKED_PLOT_ERROR = "addToCPlot2D ERROR: cannot find y-axis label"
_SUMMARY_FILES = ("logfile.pdf", "logfile.pdf.lst", f"{ROOT}_fsc.eps", f"{ROOT}_guinier.eps")


def postprocess_args(pixel_size_A: float, options: dict, masked: bool) -> list[str]:
    """relion_postprocess's arguments (inputs ``half1.mrc``, ``half2.mrc``, ``mask.mrc``)."""
    args = ["--i", "half1.mrc", "--i2", "half2.mrc", "--o", f"./{ROOT}"]
    args += ["--angpix", f"{pixel_size_A:g}"]
    if masked:
        args += ["--mask", "mask.mrc"]
    if options["auto_bfactor"]:
        args += ["--auto_bfac", "--autob_lowres", f"{options['autob_lowres_A']:g}"]
    else:
        args += ["--adhoc_bfac", f"{options['bfactor_A2']:g}"]
    if options["skip_fsc_weighting"]:
        args += ["--skip_fsc_weighting", "--low_pass", f"{options['low_pass_A']:g}"]
    return args


def postprocess(half1: str, half2: str, mask: str, pixel_size_A: float, options: dict) -> dict:
    """Step: run relion_postprocess on two half maps (and ``mask``, "" = none).

    Returns RELION's general values (``final_resolution_A``, ``bfactor_A2``), the FSC
    table by column, the maps written, ``warning`` and ``commands``.
    """
    from hpcem.convert.relion_results import read_postprocess
    from hpcem.relion.runner import link_input, run_relion

    work = Path(options["work"])
    link_input(half1, work / "half1.mrc")
    link_input(half2, work / "half2.mrc")
    if mask:
        link_input(mask, work / "mask.mrc")
    star, sharpened = work / f"{ROOT}.star", work / f"{ROOT}.mrc"
    for old in (star, sharpened, work / f"{ROOT}_masked.mrc"):
        old.unlink(missing_ok=True)  # an earlier attempt's; only this command's output counts
    record = run_relion(
        PROGRAM,
        postprocess_args(pixel_size_A, options, bool(mask)),
        workdir=work,
        site=options["site"],
        log=options["log"],
        label="half maps",
        check=False,
    )
    warning = None
    if record["returncode"] != 0:
        tail = " | ".join(record.get("stderr_tail") or ["no output"])
        if mask or _UNMASKED_PLOT_ERROR not in tail or not (star.is_file() and sharpened.is_file()):
            raise HpcemError(f"{PROGRAM} exited with code {record['returncode']}: {tail}")
        warning = (
            f"{PROGRAM} {record['version']} exited with code {record['returncode']} plotting "
            "the masked FSC of an unmasked run, after writing its results"
        )
    for extra in _SUMMARY_FILES:
        (work / extra).unlink(missing_ok=True)
    try:
        curves = read_postprocess(star)
    except DataFormatError as exc:
        raise HpcemError(f"{PROGRAM}'s output: {exc}") from None
    cols, general = curves.columns, curves.extra["general"]
    maps = [str(sharpened)]
    if mask and (work / f"{ROOT}_masked.mrc").is_file():
        maps.append(str(work / f"{ROOT}_masked.mrc"))
    return {
        "final_resolution_A": float(general["rlnFinalResolution"]),
        "bfactor_A2": float(general.get("rlnBfactorUsedForSharpening", 0.0)),
        "labels": [str(v) for v in cols["label"]],
        "resolution_A": [float(v) for v in cols["resolution_A"]],
        "frequency": [float(v) for v in cols["frequency"][0]],
        "fsc": [[round(float(v), 6) for v in curve] for curve in cols["fsc"]],
        "maps": maps,
        "warning": warning,
        "commands": [record],
        "relion_version": record["version"],
    }


def register_postprocess(ctx, pixel_size_A: float, box: int) -> dict:
    """Controller step: write outputs ``fsc`` and ``volumes`` from the step's result.

    The curves are those :func:`hpcem.convert.relion_results.read_postprocess` reads
    (``corrected`` with RELION's ``_rlnFinalResolution``; the others with RELION's 0.143
    rule), the one RELION reports first: ``corrected`` with a mask, else ``unmasked``.
    """
    r = ctx.result("postprocess")
    labels = r["labels"]
    primary = "corrected" if "corrected" in labels else "unmasked"
    order = [labels.index(primary)] + [i for i, k in enumerate(labels) if k != primary]
    with ctx.create_set("fsc", "hpcem.SetOfFSCs") as writer:
        writer.append_columns(
            {
                "label": [labels[i] for i in order],
                "resolution_A": [r["resolution_A"][i] for i in order],
                "frequency": [r["frequency"] for _ in order],
                "fsc": [r["fsc"][i] for i in order],
            }
        )
    with ctx.create_set("volumes", "hpcem.SetOfVolumes") as writer:
        writer.append_columns(
            {
                "image": [ctx.path(m) for m in r["maps"]],
                "pixel_size_A": [pixel_size_A] * len(r["maps"]),
                "box_size": [box] * len(r["maps"]),
                "half": [0] * len(r["maps"]),
            }
        )
    return {
        "final_resolution_A": r["final_resolution_A"],
        "bfactor_A2": r["bfactor_A2"],
        "curves": [labels[i] for i in order],
        "warning": r["warning"],
        "relion_version": r["relion_version"],
    }


def _halves(volumes) -> dict[int, int]:
    """Row of the half map 1 and 2 in a volume set (missing halves absent)."""
    halves = [int(h) for h in volumes.column("half")]
    return {h: halves.index(h) for h in (1, 2) if h in halves}


class PostprocessRelion(Protocol):
    name = "relion.postprocess"
    label = "Post-process half maps (RELION)"
    version = "1"
    help = (
        "Gold-standard FSC of two half maps, B-factor sharpening (automatic Guinier fit or "
        "given) and FSC weighting with RELION 3.1's relion_postprocess; with a mask, the "
        "FSC is corrected for the mask by phase randomisation."
    )
    inputs = (
        Input(
            "volumes",
            ("hpcem.SetOfVolumes",),
            help="Volumes holding the two half maps (half = 1 and 2), e.g. relion.reconstruct "
            "with half_maps.",
        ),
        Input(
            "mask",
            ("hpcem.SetOfMasks",),
            required=False,
            help="Solvent mask (its first 3D mask; 1 = protein, 0 = solvent, soft edge).",
        ),
    )
    params = (
        Param.bool(
            "auto_bfactor",
            True,
            help="Fit the B-factor to the Guinier plot beyond autob_lowres_A (--auto_bfac).",
        ),
        Param.float(
            "autob_lowres_A",
            10.0,
            min=1.0,
            max=100.0,
            units="Å",
            help="Lowest resolution in the B-factor fit (--autob_lowres).",
        ),
        Param.float(
            "bfactor_A2",
            -1000.0,
            min=-100000.0,
            max=100000.0,
            units="Å²",
            help="B-factor applied without auto_bfactor (--adhoc_bfac; negative sharpens).",
        ),
        Param.bool(
            "skip_fsc_weighting",
            False,
            expert=1,
            help="No FSC weighting; low-pass at low_pass_A instead (--skip_fsc_weighting).",
        ),
        Param.float(
            "low_pass_A",
            5.0,
            min=0.0,
            max=100.0,
            units="Å",
            expert=1,
            help="Low-pass filter with skip_fsc_weighting (--low_pass).",
        ),
    )
    outputs = (
        Output(
            "fsc",
            "hpcem.SetOfFSCs",
            help="RELION's FSC curves (corrected, unmasked, masked, phase_randomised_masked; the "
            "first is the one RELION reports) with their 0.143 resolution.",
        ),
        Output(
            "volumes",
            "hpcem.SetOfVolumes",
            help="The sharpened map (and the masked sharpened map with a mask).",
        ),
    )
    citations = RELION_CITATIONS

    def validate(self, ctx) -> list[str]:
        from hpcem.relion.programs import program_problems, site_name_of

        problems = []
        try:
            volumes = ctx.input("volumes")
        except HpcemError:
            volumes = None
        if volumes is not None:
            halves = _halves(volumes)
            if len(halves) < 2:
                problems.append(
                    "input volumes has no half maps 1 and 2 (column half): reconstruct them "
                    "with relion.reconstruct half_maps"
                )
            else:
                boxes = {int(volumes.column("box_size")[i]) for i in halves.values()}
                pixels = {float(volumes.column("pixel_size_A")[i]) for i in halves.values()}
                if len(boxes) > 1 or len(pixels) > 1:
                    problems.append(f"the half maps differ in box {boxes} or pixel size {pixels}")
        return problems + program_problems([PROGRAM], site_name_of(ctx))

    def steps(self, ctx) -> list[Step]:
        from hpcem.relion.runner import relion_places

        p = ctx.params
        volumes = ctx.input("volumes")
        halves = _halves(volumes)
        images = volumes.column("image")
        pixel = float(volumes.column("pixel_size_A")[halves[1]])
        box = int(volumes.column("box_size")[halves[1]])
        mask = ""
        if ctx.inputs.get("mask"):
            mask = ctx.relpath(str(ctx.input("mask").column("image")[0]))
        options = {k: p[k] for k in (prm.name for prm in self.params)} | relion_places(ctx)
        return [
            Step(
                "postprocess",
                "hpcem.protocols.relion_postprocess:postprocess",
                {
                    "half1": ctx.relpath(str(images[halves[1]])),
                    "half2": ctx.relpath(str(images[halves[2]])),
                    "mask": mask,
                    "pixel_size_A": pixel,
                    "options": options,
                },
            ),
            Step(
                "register",
                "hpcem.protocols.relion_postprocess:register_postprocess",
                {"pixel_size_A": pixel, "box": box},
                deps=("postprocess",),
                controller=True,
            ),
        ]
