"""Average particle images with MPI: the sum over a stack is split across ranks (mpi4py).

A small real MPI protocol that exercises the MPI path end to end (site MPI launcher,
mpi4py reduction, result back to the controller); the heavy MPI kernels come with 3D
reconstruction. The output is one 2D class whose representative is the average.
"""

from __future__ import annotations

import os

from hpcem.protocol import MPI, Citation, Output, Param, Protocol, Step

MPI4PY_CITATION = Citation(
    "Dalcin2021",
    "@article{Dalcin2021, author = {Dalcin, Lisandro and Fang, Yao-Lung L.}, title = {mpi4py: "
    "Status Update After 12 Years of Development}, journal = {Computing in Science & "
    "Engineering}, volume = {23}, pages = {47--54}, year = {2021}, "
    "doi = {10.1109/MCSE.2021.3083216}}",
)


def register_average(ctx, stack: str) -> dict:
    """Controller step: one class holding every image, with the average as representative."""
    result = ctx.result("average")
    with ctx.create_set("average", "hpcem.SetOfClasses2D") as writer:
        writer.append_columns(
            {
                "representative": [result["out_path"]],
                "representative_index": [0],
                "size": [result["n_images"]],
                "member_ids": [list(range(result["n_images"]))],
            }
        )
    return {"n_images": result["n_images"], "ranks": result["ranks"]}


class AverageParticles(Protocol):
    name = "particles.average_mpi"
    label = "Average particle images (MPI)"
    help = (
        "Average all images of a particle stack (MRCS); the images are split across MPI "
        "ranks and summed with an MPI reduction."
    )
    params = (
        Param.path("stack", None, required=True, help="Particle stack (MRC/MRCS file)."),
        Param.int("ranks", 2, min=1, max=4096, help="MPI ranks."),
    )
    outputs = (Output("average", "hpcem.SetOfClasses2D", help="One class: the average image."),)
    citations = (MPI4PY_CITATION,)

    def validate(self, ctx) -> list[str]:
        stack = ctx.path(ctx.params["stack"])
        if not os.path.isfile(stack):
            return [f"stack: no file {stack!r}"]
        return []

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        out = ctx.relpath(str(ctx.run_dir / "average.mrc"))
        return [
            Step(
                "average",
                "hpcem.parallel.mean_image:mean_particle_image",
                {"stack_path": p["stack"], "out_path": out},
                mpi=MPI(ranks=p["ranks"]),
            ),
            Step(
                "register",
                "hpcem.protocols.average_particles:register_average",
                {"stack": p["stack"]},
                deps=("average",),
                controller=True,
            ),
        ]
