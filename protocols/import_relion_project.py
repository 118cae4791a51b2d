"""Continue a RELION project in hpcem: one ``import.relion_job`` run per finished RELION
job, in dependency order, with lineage.

:func:`import_relion_project` reads ``default_pipeline.star``
(:func:`hpcem.convert.relion_pipeline.read_pipeline`: RELION 3.1, 4, 5), and for every
job that RELION marks ``Succeeded`` creates and runs an ``import.relion_job`` run whose
``upstream`` inputs are the outputs of the runs made for the jobs that produced its input
nodes. The run's one step reads each output node of the job
(:func:`~hpcem.convert.relion_pipeline.read_node`) and writes it as an hpcem set named
after its type (``micrographs``, ``ctfs``, ``coordinates``, ``particles``, ``classes2d``,
``classes3d``, ``volumes``, ``masks``, ``fscs``; a second node of the same type gets
``_2``). Micrograph names in coordinate and particle files are linked to the ids of the
upstream micrograph sets, so ``hpcem`` protocols can take the imported particles with
their micrographs. Importing the same RELION folder again adds only the jobs that are not
imported yet (RELION went on, hpcem follows).
"""

from __future__ import annotations

import os
from typing import Any

from hpcem.protocols.import_images import HPCEM_CITATION
from hpcem.protocols.import_particles import SCHERES_2012, write_converted

from hpcem.errors import DataFormatError, HpcemError
from hpcem.model import SET_TYPES
from hpcem.protocol import Input, Output, Param, Protocol, Step

#: hpcem output name of each set type a RELION node imports as.
OUTPUT_NAMES = {
    "hpcem.SetOfMovies": "movies",
    "hpcem.SetOfMicrographs": "micrographs",
    "hpcem.SetOfCTFs": "ctfs",
    "hpcem.SetOfCoordinates": "coordinates",
    "hpcem.SetOfParticles": "particles",
    "hpcem.SetOfClasses2D": "classes2d",
    "hpcem.SetOfClasses3D": "classes3d",
    "hpcem.SetOfVolumes": "volumes",
    "hpcem.SetOfMasks": "masks",
    "hpcem.SetOfFSCs": "fscs",
}
PROTOCOL = "import.relion_job"


def _micrograph_ids(ctx, root: str) -> dict[str, int]:
    """RELION micrograph name (relative to the RELION project) -> id, from the upstream
    micrograph sets (their paths are absolute: the RELION folder joined)."""
    ids: dict[str, int] = {}
    for ref in ctx.inputs.get("upstream", []):
        s = ctx._open(ref)
        if s.type_name != "hpcem.SetOfMicrographs":
            continue
        for path, mid in zip(s.column("image"), s.column("id"), strict=True):
            ids[os.path.relpath(str(path), root)] = int(mid)
    return ids


def _optics_of_upstream(ctx) -> dict | None:
    for ref in ctx.inputs.get("upstream", []):
        s = ctx._open(ref)
        if s.type_name == "hpcem.SetOfMicrographs" and len(s.optics.get("optics_group", [])):
            return s.optics
    return None


def _map_set(path: str, set_type: str) -> dict[str, Any]:
    """VOLUME or MASK columns of one MRC map (RELION's half maps: ``half1``/``half2``)."""
    from hpcem.io.images import read_header

    h = read_header(path)
    name = os.path.basename(path)
    cols: dict[str, Any] = {
        "image": [path],
        "pixel_size_A": [h.pixel_size_A or 0.0],
        "box_size": [h.shape[2]],
    }
    if set_type == "hpcem.SetOfVolumes":
        cols["half"] = [1 if "half1" in name else 2 if "half2" in name else 0]
    else:
        cols["dimensions"] = [3 if h.shape[0] > 1 else 2]
    return cols


def register_job(ctx, relion_dir: str, job: str) -> dict:
    """Controller step: read every output node of RELION job ``job`` and write its sets.

    A node hpcem has no set for (logs, optimiser files of refinements) is listed as
    ``not_imported``; a node that cannot be read fails the run (naming the file), so a
    job is imported whole or not at all.
    """
    from hpcem.convert.relion_pipeline import read_node, read_pipeline

    root = ctx.path(relion_dir)
    pipe = read_pipeline(os.path.join(root, "default_pipeline.star"))
    jobs = {j.name: j for j in pipe.jobs}
    if job not in jobs:
        raise DataFormatError(f"{root}/default_pipeline.star: no job {job}")
    mic_ids = _micrograph_ids(ctx, root)
    written: dict[str, dict] = {}
    skipped: list[dict] = []
    pending: list[tuple[str, str, Any]] = []
    for node_name in jobs[job].outputs:
        node = pipe.nodes[node_name]
        path = os.path.join(root, node.name)
        if node.set_type is None:
            skipped.append({"node": node.name, "reason": f"no hpcem set for {node.type_label}"})
            continue
        if not os.path.exists(path):
            raise DataFormatError(f"{path}: output node of {job} does not exist")
        if node.set_type in ("hpcem.SetOfVolumes", "hpcem.SetOfMasks"):
            pending.append((node.name, node.set_type, _map_set(path, node.set_type)))
            continue
        try:
            convs = read_node(node, root, mic_ids or None)
        except DataFormatError as exc:
            if not mic_ids or "not in the micrograph set" not in str(exc):
                raise
            convs = read_node(node, root, None)  # names of micrographs RELION moved
            skipped.append({"node": node.name, "reason": f"micrograph ids not linked: {exc}"})
        if not convs:
            skipped.append({"node": node.name, "reason": f"no reader for {node.type_label}"})
        for conv in convs:
            pending.append((node.name, conv.set_type, conv))
    optics = _optics_of_upstream(ctx)
    for node_name, set_type, data in pending:
        base = OUTPUT_NAMES.get(set_type, set_type.rsplit("SetOf", 1)[-1].lower())
        name, k = base, 1
        while name in written:
            k += 1
            name = f"{base}_{k}"
        with ctx.create_set(name, set_type) as writer:
            if isinstance(data, dict):
                writer.append_columns(data)
                n = len(data["image"])
            else:
                table = data.optics or (
                    optics if "optics_group" in SET_TYPES[set_type].field_names else None
                )
                if set_type == "hpcem.SetOfCTFs" and not data.optics:
                    table = optics
                write_converted(writer, data, table or None, keep_ids=True)
                n = len(data)
        written[name] = {"node": node_name, "type": set_type, "count": n}
    return {"job": job, "outputs": written, "not_imported": skipped}


class ImportRelionJob(Protocol):
    name = PROTOCOL
    label = "Import RELION job"
    help = (
        "Import the outputs of one finished RELION job (micrographs, CTFs, coordinates, "
        "particles, 2D/3D classes, maps, masks, FSC) as hpcem sets, with the runs of the "
        "jobs it read from as its inputs. Made for every job of a RELION project by "
        "'hpcem import-relion PROJECT RELION_DIR'."
    )
    inputs = (
        Input(
            "upstream",
            tuple(SET_TYPES),
            help="Outputs of the runs made for the jobs whose outputs this job read "
            "(lineage; micrograph sets also link micrograph names to ids).",
            required=False,
            many=True,
        ),
    )
    params = (
        Param.path("relion_dir", None, required=True, help="The RELION project folder."),
        Param.string("job", None, required=True, help="RELION job name, e.g. 'Extract/job007/'."),
        Param.string("alias", "", help="RELION's alias of the job (for the record)."),
        Param.string("job_type", "", help="RELION job type, e.g. 'relion.extract'."),
    )
    outputs = tuple(
        Output(n, t, help="First output node of this type; more get '_2', '_3'.")
        for t, n in OUTPUT_NAMES.items()
    )
    citations = (HPCEM_CITATION, SCHERES_2012)

    def validate(self, ctx) -> list[str]:
        from hpcem.convert.relion_pipeline import read_pipeline

        try:
            pipe = read_pipeline(
                os.path.join(ctx.path(ctx.params["relion_dir"]), "default_pipeline.star")
            )
        except HpcemError as exc:
            return [str(exc)]
        if ctx.params["job"] not in {j.name for j in pipe.jobs}:
            return [f"job: {ctx.params['job']!r} is not a job of this RELION project"]
        return []

    def steps(self, ctx) -> list[Step]:
        p = ctx.params
        return [
            Step(
                "register",
                "hpcem.protocols.import_relion_project:register_job",
                {"relion_dir": p["relion_dir"], "job": p["job"]},
                controller=True,
            )
        ]


# --- the whole project ----------------------------------------------------------------------


def imported_jobs(project, relion_dir: str) -> dict[str, int]:
    """RELION job name -> id of the finished ``import.relion_job`` run of ``relion_dir``."""
    from hpcem.protocol.context import project_relative

    want = project_relative(project.path, relion_dir)
    out = {}
    for run in project.runs:
        mine = run.protocol == PROTOCOL and run.params.get("relion_dir") == want
        if mine and run.state == "finished":
            out[run.params["job"]] = run.id
    return out


def import_relion_project(
    project, relion_dir: str, workers: int | None = 1, progress=None
) -> list[dict]:
    """Import every finished job of the RELION project ``relion_dir`` not imported yet.

    Jobs go in dependency order; each becomes one ``import.relion_job`` run, launched and
    waited for (its inputs must be finished before the next run can point to them).
    Returns one row per RELION job: ``{"job", "type", "status", "run", "state", "note"}``;
    ``progress(row)`` is called after each. Jobs RELION did not finish are listed and not
    imported, nor are the jobs downstream of a job that is not imported (lineage is whole).
    """
    from hpcem.convert.relion_pipeline import read_pipeline
    from hpcem.execution import runs as lifecycle

    relion_dir = os.path.abspath(relion_dir)
    pipe = read_pipeline(os.path.join(relion_dir, "default_pipeline.star"))
    done = imported_jobs(project, relion_dir)
    rows = []
    for job in pipe.jobs:
        row = {"job": job.name, "type": job.type_label, "status": job.status, "run": None}
        if job.name in done:
            row.update(run=done[job.name], state="finished", note="imported before")
        elif job.status != "Succeeded":
            row.update(state="skipped", note=f"RELION status {job.status}")
        elif missing := [p for p in pipe.parents(job.name) if p not in done]:
            row.update(state="skipped", note=f"upstream job {missing[0]} is not imported")
        else:
            refs = []
            for parent in pipe.parents(job.name):
                if parent in done:
                    rec = project.run(done[parent])
                    refs += [f"{rec.id}:{o}" for o in sorted(rec.output_types)]
            label = f"RELION {job.name.rstrip('/')}" + (f" ({job.alias})" if job.alias else "")
            run = lifecycle.create_run(
                project,
                PROTOCOL,
                {
                    "relion_dir": relion_dir,
                    "job": job.name,
                    "alias": job.alias,
                    "job_type": job.type_label,
                },
                {"upstream": refs} if refs else {},
                label=label,
            )
            rec = lifecycle.launch(project, run.id, workers=workers, foreground=True)
            row.update(run=run.id, state=rec.state, note=rec.error)
            if rec.state == "finished":
                done[job.name] = run.id
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def job_graph(project, relion_dir: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(RELION job names in order, parent -> child edges) as imported: for pictures."""
    from hpcem.convert.relion_pipeline import read_pipeline

    pipe = read_pipeline(os.path.join(os.path.abspath(relion_dir), "default_pipeline.star"))
    names = [j.name for j in pipe.jobs]
    edges = [(p, j) for j in names for p in pipe.parents(j)]
    return names, edges
