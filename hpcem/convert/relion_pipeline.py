"""A RELION project's ``default_pipeline.star`` -> its job graph, ready to import as hpcem
runs with lineage.

RELION 3.1 writes process and node types as numbers (``src/pipeline_jobs.h`` of 3.1:
``PROC_MOTIONCORR 1``, ``NODE_MICS 1``, ...) and statuses 0-4; RELION 4 and 5 write
labels (``relion.motioncorr``, ``MicrographGroupMetadata.star.relion.motioncorr``,
``Succeeded``). Both are read; every node gets the hpcem set type it would import as
(None for logs, optimiser files and others hpcem has no set for) and the reader to use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcem.convert.relion_star import read_star
from hpcem.errors import DataFormatError

#: RELION 3.1 process type numbers (``src/pipeline_jobs.h``) -> RELION 4 type labels.
PROCESS_TYPES_31 = {
    0: "relion.import",
    1: "relion.motioncorr",
    2: "relion.ctffind",
    3: "relion.manualpick",
    4: "relion.autopick",
    5: "relion.extract",
    7: "relion.select",
    8: "relion.class2d",
    9: "relion.class3d",
    10: "relion.refine3d",
    12: "relion.maskcreate",
    13: "relion.joinstar",
    14: "relion.subtract",
    15: "relion.postprocess",
    16: "relion.localres",
    18: "relion.initialmodel",
    19: "relion.multibody",
    20: "relion.polish",
    21: "relion.ctfrefine",
    99: "relion.external",
}

#: RELION 3.1 statuses -> RELION 4 labels.
STATUS_31 = {0: "Running", 1: "Scheduled", 2: "Succeeded", 3: "Failed", 4: "Aborted"}

#: RELION 3.1 node type numbers -> RELION 4 node type labels (first part).
NODE_TYPES_31 = {
    0: "MicrographMovieGroupMetadata.star",
    1: "MicrographGroupMetadata.star",
    2: "MicrographCoordsGroup.star",
    3: "ParticleGroupMetadata.star",
    5: "Image2DGroupMetadata.star",
    6: "DensityMap.mrc",
    7: "Mask3D.mrc",
    8: "ModelData.star.relion",  # 3.1's NODE_MODEL (RELION 4 has no model node)
    9: "OptimiserData.star",
    10: "DensityMap.mrc.halfmap",
    11: "DensityMap.mrc.postprocess",
    12: "Image3D.mrc.localresmap",
    13: "LogFile.pdf",
    14: "ProcessData.star.postprocess",
    15: "ParamsData.txt.polish",
}

#: Node type label prefix -> (hpcem set type, reader in hpcem.convert). Longest first wins.
#: Not mapped (set type None): logs, Select's class_averages.star (2D references),
#: optimiser files of refinements, polishing parameters, local-resolution maps.
NODE_SETS = {
    "MicrographMovieGroupMetadata.star": ("hpcem.SetOfMovies", "relion.read_movies"),
    "MicrographGroupMetadata.star": ("hpcem.SetOfMicrographs", "relion.read_micrographs"),
    "MicrographCoordsGroup.star": ("hpcem.SetOfCoordinates", "relion.read_coordinate_list"),
    "ParticleGroupMetadata.star": ("hpcem.SetOfParticles", "relion.read_particles"),
    "ModelData.star.relion": ("hpcem.SetOfClasses", "relion_results.read_classes"),
    "OptimiserData.star.relion.class2d": (
        "hpcem.SetOfClasses2D",
        "relion_results.read_optimiser_classes",
    ),
    "OptimiserData.star.relion.class3d": (
        "hpcem.SetOfClasses3D",
        "relion_results.read_optimiser_classes",
    ),
    "DensityMap.mrc": ("hpcem.SetOfVolumes", None),
    "Mask3D.mrc": ("hpcem.SetOfMasks", None),
    "ProcessData.star.relion.postprocess": ("hpcem.SetOfFSCs", "relion_results.read_postprocess"),
    "ProcessData.star.postprocess": ("hpcem.SetOfFSCs", "relion_results.read_postprocess"),
}


@dataclasses.dataclass
class RelionNode:
    """One output file of a RELION job: its path (relative to the project folder), RELION
    node type label, the hpcem set type it imports as (None: no hpcem set) and the
    reader (``"relion.read_particles"``, ... in :mod:`hpcem.convert`; None: none)."""

    name: str
    type_label: str
    set_type: str | None
    reader: str | None
    producer: str | None = None


@dataclasses.dataclass
class RelionJob:
    """One RELION process: ``name`` (``Class2D/job008/``), ``alias``, ``type_label``
    (``relion.class2d``), ``status`` (``Succeeded``, ...), its input and output node
    names."""

    name: str
    alias: str
    type_label: str
    status: str
    inputs: list[str] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RelionPipeline:
    """A RELION project's job graph: ``jobs`` in dependency order (every job after the
    jobs that made its inputs), ``nodes`` by name, ``edges`` as (from, to) pairs where
    one end is a node and the other a job (input edges node -> job, output edges
    job -> node), ``job_counter`` and the RELION ``version``."""

    jobs: list[RelionJob]
    nodes: dict[str, RelionNode]
    edges: list[tuple[str, str]]
    job_counter: int
    version: str

    def parents(self, job: str) -> list[str]:
        """The jobs whose outputs ``job`` reads (its lineage one step up)."""
        by_name = {j.name: j for j in self.jobs}
        out = []
        for node in by_name[job].inputs:
            producer = self.nodes[node].producer if node in self.nodes else None
            if producer is not None and producer not in out:
                out.append(producer)
        return out


def node_set(type_label: str) -> tuple[str | None, str | None]:
    """(hpcem set type, reader) of a RELION node type label."""
    best = None
    for prefix in NODE_SETS:
        if type_label.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return NODE_SETS[best] if best else (None, None)


def _col(path: str, blocks: Mapping[str, Any], block: str, *labels: str) -> np.ndarray:
    b = blocks.get(block)
    if b is None or not b.loop:
        if block in ("pipeline_input_edges", "pipeline_output_edges"):
            return np.empty(0, dtype=object)
        raise DataFormatError(f"{path}: no data_{block} loop (not a RELION pipeline STAR)")
    for lab in labels:
        if lab in b.columns:
            return b.columns[lab]
    if len(b) == 0:
        return np.empty(0, dtype=object)
    raise DataFormatError(
        f"{path}, block data_{block}: missing mandatory column "
        f"{' or '.join('_' + lab for lab in labels)}"
    )


def read_pipeline(path: str | os.PathLike) -> RelionPipeline:
    """Read ``default_pipeline.star`` (RELION 3.1, 4 or 5) into a :class:`RelionPipeline`.

    Raises DataFormatError for a file that is not a pipeline, an edge naming a job or node
    that the file does not declare, or a cycle.
    """
    path = os.fspath(path)
    blocks = read_star(path)
    general = blocks.get("pipeline_general")
    counter = int(general.values.get("rlnPipeLineJobCounter", 0)) if general is not None else 0
    names = [str(s) for s in _col(path, blocks, "pipeline_processes", "rlnPipeLineProcessName")]
    aliases = _col(path, blocks, "pipeline_processes", "rlnPipeLineProcessAlias")
    ptypes = _col(
        path,
        blocks,
        "pipeline_processes",
        "rlnPipeLineProcessTypeLabel",
        "rlnPipeLineProcessType",
    )
    status = _col(
        path,
        blocks,
        "pipeline_processes",
        "rlnPipeLineProcessStatusLabel",
        "rlnPipeLineProcessStatus",
    )
    numeric = "rlnPipeLineProcessType" in blocks["pipeline_processes"].columns
    jobs = {}
    for name, alias, ptype, st in zip(names, aliases, ptypes, status):
        if numeric:
            label = PROCESS_TYPES_31.get(int(ptype), f"relion.type{int(ptype)}")
            state = STATUS_31.get(int(st), f"status{int(st)}")
        else:
            label, state = str(ptype), str(st)
        jobs[name] = RelionJob(name, "" if str(alias) == "None" else str(alias), label, state)
    nodes = {}
    nnames = _col(path, blocks, "pipeline_nodes", "rlnPipeLineNodeName")
    ntypes = _col(path, blocks, "pipeline_nodes", "rlnPipeLineNodeTypeLabel", "rlnPipeLineNodeType")
    for name, ntype in zip(nnames, ntypes):
        label = NODE_TYPES_31.get(int(ntype), f"type{int(ntype)}") if numeric else str(ntype)
        set_type, reader = node_set(label)
        nodes[str(name)] = RelionNode(str(name), label, set_type, reader)
    edges: list[tuple[str, str]] = []
    ins = zip(
        _col(path, blocks, "pipeline_input_edges", "rlnPipeLineEdgeFromNode"),
        _col(path, blocks, "pipeline_input_edges", "rlnPipeLineEdgeProcess"),
    )
    for node, job in ins:
        _check_edge(path, "input", str(node), str(job), nodes, jobs)
        jobs[str(job)].inputs.append(str(node))
        edges.append((str(node), str(job)))
    outs = zip(
        _col(path, blocks, "pipeline_output_edges", "rlnPipeLineEdgeProcess"),
        _col(path, blocks, "pipeline_output_edges", "rlnPipeLineEdgeToNode"),
    )
    for job, node in outs:
        _check_edge(path, "output", str(node), str(job), nodes, jobs)
        jobs[str(job)].outputs.append(str(node))
        nodes[str(node)].producer = str(job)
        edges.append((str(job), str(node)))
    for node in nodes.values():
        if node.set_type == "hpcem.SetOfClasses":  # 3.1 model.star: 2D or 3D by its job
            job = jobs.get(node.producer or "")
            node.set_type = (
                "hpcem.SetOfClasses2D"
                if job and "class2d" in job.type_label
                else ("hpcem.SetOfClasses3D")
            )
    version = "3.1" if numeric else ("5" if _max_version(blocks) >= 50000 else "4")
    pipe = RelionPipeline(list(jobs.values()), nodes, edges, counter, version)
    pipe.jobs = _dependency_order(path, pipe)
    return pipe


def _max_version(blocks: Mapping[str, Any]) -> int:
    return max((b.version for b in blocks.values()), default=0)


def _check_edge(path: str, kind: str, node: str, job: str, nodes: dict, jobs: dict) -> None:
    if job not in jobs:
        raise DataFormatError(f"{path}: {kind} edge of {node} names job {job}, not in the file")
    if node not in nodes:
        raise DataFormatError(f"{path}: {kind} edge of {job} names node {node}, not in the file")


def _dependency_order(path: str, pipe: RelionPipeline) -> list[RelionJob]:
    """Jobs ordered so that every job comes after the producers of its inputs (Kahn's
    algorithm, ties in the file's order, i.e. RELION's job order)."""
    index = {j.name: i for i, j in enumerate(pipe.jobs)}
    parents = {j.name: set(pipe.parents(j.name)) - {j.name} for j in pipe.jobs}
    children: dict[str, list[str]] = {j.name: [] for j in pipe.jobs}
    for name, ps in parents.items():
        for p in ps:
            children[p].append(name)
    remaining = {n: len(ps) for n, ps in parents.items()}
    ready = sorted((n for n, k in remaining.items() if k == 0), key=index.get)
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for c in children[name]:
            remaining[c] -= 1
            if remaining[c] == 0:
                ready.append(c)
                ready.sort(key=index.get)
    if len(order) != len(pipe.jobs):
        stuck = sorted(set(index) - set(order), key=index.get)
        raise DataFormatError(f"{path}: the job graph has a cycle through {stuck[:5]}")
    by_name = {j.name: j for j in pipe.jobs}
    return [by_name[n] for n in order]


def read_node(
    node: RelionNode, root: str | os.PathLike, micrograph_ids: Mapping[str, int] | None = None
) -> list[Any]:
    """Read one output node of a RELION project (``root``: the project folder) into hpcem
    sets: a list of :class:`~hpcem.convert.Converted` (empty for nodes hpcem has no set
    for, or whose set is an MRC file to import as such: maps, masks). A micrograph STAR
    with CTF columns gives the micrographs and their CTFs (ids linked by name: the CTFs'
    ``micrograph_id`` is the micrograph's 1-based row, the micrographs' ``id``); RELION
    3.1 coordinate nodes (``coords_suffix_*.star``) and 4/5 lists are both read; a 3.1
    ``_model.star`` node is read with its ``_data.star``. ``micrograph_ids`` (micrograph
    name -> id in the hpcem micrograph set the job's input was imported as) fills the
    ``micrograph_id`` of particles and coordinates."""
    from hpcem.convert import relion, relion_results

    path = os.path.join(os.fspath(root), node.name)
    if node.reader is None:
        return []
    if node.set_type == "hpcem.SetOfMicrographs":
        mics = relion.read_micrographs(path, root=root)
        out = [mics]
        if "rlnDefocusU" in mics.extra:
            names = list(relion.read_micrographs(path).columns["image"])
            mics.columns["id"] = np.arange(1, len(names) + 1, dtype=np.int64)
            ids = {n: i for i, n in enumerate(names, 1)}
            out.append(relion.read_ctfs(path, root=root, micrograph_ids=ids))
        return out
    if node.set_type == "hpcem.SetOfCoordinates":
        if os.path.basename(node.name).startswith("coords_suffix"):
            return [relion.read_coordinate_suffix(path, root, micrograph_ids)]
        return [relion.read_coordinate_list(path, root, micrograph_ids)]
    if node.set_type == "hpcem.SetOfParticles":
        return [relion.read_particles(path, root=root, micrograph_ids=micrograph_ids)]
    if node.reader == "relion_results.read_classes":
        data = node.name.replace("_model.star", "_data.star")
        return [relion_results.read_classes(path, os.path.join(os.fspath(root), data), root=root)]
    module, func = node.reader.split(".")
    reader = getattr(relion if module == "relion" else relion_results, func)
    return [reader(path, root=root)]
