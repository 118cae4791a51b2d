"""CTF estimation with hpcem's own estimator: one step per micrograph.

Tile-averaged power spectrum, rotational average (Cython kernel), 1D defocus search and
2D astigmatism refinement; see :mod:`hpcem.ctf.estimate`.
"""

from __future__ import annotations

from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step

ROHOU_GRIGORIEFF_2015 = Citation(
    "Rohou2015",
    "@article{Rohou2015, author = {Rohou, Alexis and Grigorieff, Nikolaus}, title = {CTFFIND4: "
    "Fast and accurate defocus estimation from electron micrographs}, journal = {J. Struct. "
    "Biol.}, volume = {192}, pages = {216--221}, year = {2015}, doi = {10.1016/j.jsb.2015.08.008}}",
)


def estimate_one(path: str, micrograph_id: int, pixel_size_A: float, voltage_kV: float,
                 cs_mm: float, amplitude_contrast: float, options: dict) -> dict:
    """Step: estimate the CTF of one micrograph file."""
    from hpcem.ctf.estimate import estimate_ctf_from_file

    result = estimate_ctf_from_file(path, pixel_size_A=pixel_size_A, voltage_kV=voltage_kV,
                                    cs_mm=cs_mm, amplitude_contrast=amplitude_contrast, **options)
    keys = ("defocus_u", "defocus_v", "defocus_angle", "fit_score")
    return {"micrograph_id": micrograph_id, "fit_resolution": float(result["fit_resolution_A"]),
            **{k: float(result[k]) for k in keys}}


def register_ctfs(ctx) -> dict:
    """Controller step: write the fitted CTFs as a set, in micrograph order."""
    found = ctx.results("estimate/")
    rows = [found[k] for k in sorted(found)]
    columns = {k: [r[k] for r in rows] for k in
               ("micrograph_id", "defocus_u", "defocus_v", "defocus_angle", "fit_resolution", "fit_score")}
    micrographs = ctx.input("micrographs")
    with ctx.create_set("ctfs", "hpcem.SetOfCTFs") as writer:
        writer.set_optics(micrographs.optics)
        writer.append_columns(columns)
    return {"count": len(rows)}


class EstimateCTF(Protocol):
    name = "ctf.estimate"
    label = "Estimate CTF"
    help = ("Estimate defocus and astigmatism of each micrograph (one step per micrograph, "
            "run in parallel). Acquisition parameters come from the input's optics table.")
    inputs = (Input("micrographs", ("hpcem.SetOfMicrographs",), help="Micrographs to fit."),)
    params = (
        Param.float("defocus_min_A", 3000.0, min=0.0, max=100000.0, units="Å", help="Lowest defocus searched."),
        Param.float("defocus_max_A", 50000.0, min=100.0, max=200000.0, units="Å", help="Highest defocus searched."),
        Param.float("res_low_A", 30.0, min=5.0, max=200.0, units="Å", help="Low-resolution end of the fit band."),
        Param.float("res_high_A", 0.0, min=0.0, max=50.0, units="Å",
                    help="High-resolution end of the fit band (0 = max(4 Å, 2.5 pixels))."),
        Param.int("tile_size_px", 512, min=64, max=4096, expert=1, help="Periodogram tile size (even)."),
        Param.bool("astigmatism", True, help="Refine astigmatism (U, V, angle) on the 2D spectrum."),
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
        options = {"defocus_min_A": p["defocus_min_A"], "defocus_max_A": p["defocus_max_A"],
                   "res_low_A": p["res_low_A"], "res_high_A": p["res_high_A"] or None,
                   "tile_size_px": p["tile_size_px"], "astigmatism": p["astigmatism"]}
        steps = []
        for i, (path, mic_id, group) in enumerate(zip(paths, ids, groups)):
            row = by_group[int(group)]
            steps.append(Step(
                f"estimate/{i:06d}", "hpcem.protocols.ctf_estimate:estimate_one",
                {"path": str(path), "micrograph_id": int(mic_id),
                 "pixel_size_A": float(optics["pixel_size_A"][row]),
                 "voltage_kV": float(optics["voltage_kV"][row]),
                 "cs_mm": float(optics["spherical_aberration_mm"][row]),
                 "amplitude_contrast": float(optics["amplitude_contrast"][row]),
                 "options": options}))
        steps.append(Step("register", "hpcem.protocols.ctf_estimate:register_ctfs",
                          deps=tuple(s.name for s in steps), controller=True))
        return steps
