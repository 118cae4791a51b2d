"""A RELION project's default_pipeline.star -> its job graph (jobs, nodes, edges, lineage,
dependency order), checked against ``starfile``'s reading of the same file."""

from __future__ import annotations

import pytest
import starfile

from hpcem.convert.relion_pipeline import node_set, read_pipeline
from hpcem.errors import DataFormatError


@pytest.fixture
def pipeline_path(shared_data):
    return shared_data / "starfile-0.5.13/default_pipeline.star"


def test_counts_and_edges_match_starfile(pipeline_path):
    pipe = read_pipeline(pipeline_path)
    blocks = starfile.read(pipeline_path)
    assert len(pipe.jobs) == 31 == len(blocks["pipeline_processes"])
    assert len(pipe.nodes) == 74 == len(blocks["pipeline_nodes"])
    ins, outs = blocks["pipeline_input_edges"], blocks["pipeline_output_edges"]
    assert len(pipe.edges) == len(ins) + len(outs)
    assert pipe.job_counter == blocks["pipeline_general"]["rlnPipeLineJobCounter"] == 32
    assert pipe.version == "3.1"
    jobs = {j.name: j for j in pipe.jobs}
    for node, job in zip(ins["rlnPipeLineEdgeFromNode"], ins["rlnPipeLineEdgeProcess"]):
        assert node in jobs[job].inputs
    for job, node in zip(outs["rlnPipeLineEdgeProcess"], outs["rlnPipeLineEdgeToNode"]):
        assert node in jobs[job].outputs and pipe.nodes[node].producer == job
    procs = blocks["pipeline_processes"]
    for name, alias in zip(procs["rlnPipeLineProcessName"], procs["rlnPipeLineProcessAlias"]):
        assert jobs[name].alias == alias


def test_types_statuses_and_sets(pipeline_path):
    pipe = read_pipeline(pipeline_path)
    jobs = {j.name: j for j in pipe.jobs}
    assert jobs["Class2D/job008/"].type_label == "relion.class2d"
    assert jobs["PostProcess/job021/"].type_label == "relion.postprocess"
    assert {j.status for j in pipe.jobs} == {"Succeeded"}  # status 2 in every row
    n = pipe.nodes
    assert n["Import/job001/movies.star"].set_type == "hpcem.SetOfMovies"
    assert n["CtfFind/job003/micrographs_ctf.star"].set_type == "hpcem.SetOfMicrographs"
    assert n["Extract/job007/particles.star"].set_type == "hpcem.SetOfParticles"
    assert n["Extract/job007/particles.star"].reader == "relion.read_particles"
    assert n["Class2D/job008/run_it025_model.star"].set_type == "hpcem.SetOfClasses2D"
    assert n["Class3D/job016/run_it025_model.star"].set_type == "hpcem.SetOfClasses3D"
    assert n["PostProcess/job021/postprocess.star"].set_type == "hpcem.SetOfFSCs"
    assert n["MaskCreate/job020/mask.mrc"].set_type == "hpcem.SetOfMasks"
    assert n["MotionCorr/job002/logfile.pdf"].set_type is None


def test_dependency_order_and_lineage(pipeline_path):
    pipe = read_pipeline(pipeline_path)
    position = {j.name: i for i, j in enumerate(pipe.jobs)}
    for job in pipe.jobs:
        for parent in pipe.parents(job.name):
            assert position[parent] < position[job.name], (parent, job.name)
    assert pipe.parents("Extract/job007/") == [
        "CtfFind/job003/",
        "AutoPick/job006/",
        "Select/job005/",
    ]
    assert pipe.parents("Import/job001/") == []
    assert pipe.jobs[0].name == "Import/job001/"


PIPELINE_4 = """
# version 30001

data_pipeline_general

_rlnPipeLineJobCounter                       4

# version 30001

data_pipeline_processes

loop_
_rlnPipeLineProcessName #1
_rlnPipeLineProcessAlias #2
_rlnPipeLineProcessTypeLabel #3
_rlnPipeLineProcessStatusLabel #4
Class2D/job003/       None relion.class2d Running
Import/job001/       None relion.importmovies  Succeeded
MotionCorr/job002/       None relion.motioncorr.own  Failed

# version 30001

data_pipeline_nodes

loop_
_rlnPipeLineNodeName #1
_rlnPipeLineNodeTypeLabel #2
_rlnPipeLineNodeTypeLabelDepth #3
Import/job001/movies.star MicrographMovieGroupMetadata.star.relion 1
MotionCorr/job002/corrected_micrographs.star MicrographGroupMetadata.star.relion.motioncorr 1
Class2D/job003/run_it025_optimiser.star OptimiserData.star.relion.class2d 1

# version 30001

data_pipeline_input_edges

loop_
_rlnPipeLineEdgeFromNode #1
_rlnPipeLineEdgeProcess #2
Import/job001/movies.star MotionCorr/job002/
MotionCorr/job002/corrected_micrographs.star Class2D/job003/

# version 30001

data_pipeline_output_edges

loop_
_rlnPipeLineEdgeProcess #1
_rlnPipeLineEdgeToNode #2
Import/job001/ Import/job001/movies.star
MotionCorr/job002/ MotionCorr/job002/corrected_micrographs.star
Class2D/job003/ Class2D/job003/run_it025_optimiser.star
"""


def test_relion4_labels(tmp_path):
    """RELION 4/5 write type and status labels (src/pipeline_jobs.h of RELION 5)."""
    path = tmp_path / "default_pipeline.star"
    path.write_text(PIPELINE_4)
    pipe = read_pipeline(path)
    assert pipe.version == "4"
    assert [j.name for j in pipe.jobs] == [
        "Import/job001/",
        "MotionCorr/job002/",
        "Class2D/job003/",
    ]
    jobs = {j.name: j for j in pipe.jobs}
    assert jobs["MotionCorr/job002/"].status == "Failed"
    assert jobs["Class2D/job003/"].alias == ""
    node = pipe.nodes["Class2D/job003/run_it025_optimiser.star"]
    assert node.set_type == "hpcem.SetOfClasses2D"
    assert node.reader == "relion_results.read_optimiser_classes"
    assert pipe.nodes["MotionCorr/job002/corrected_micrographs.star"].set_type == (
        "hpcem.SetOfMicrographs"
    )
    assert node_set("LogFile.pdf.relion.motioncorr") == (None, None)


def test_bad_pipelines(tmp_path):
    path = tmp_path / "bad.star"
    path.write_text(
        PIPELINE_4.replace(
            "Class2D/job003/ Class2D/job003/run", "Class2D/job009/ Class2D/job003/run"
        )
    )
    with pytest.raises(
        DataFormatError, match=r"bad.star: output edge .* names job Class2D/job009/"
    ):
        read_pipeline(path)
    cyc = PIPELINE_4.replace(
        "MotionCorr/job002/corrected_micrographs.star Class2D/job003/",
        "MotionCorr/job002/corrected_micrographs.star Class2D/job003/\n"
        "Class2D/job003/run_it025_optimiser.star Import/job001/",
    )
    path.write_text(cyc)
    with pytest.raises(DataFormatError, match="cycle"):
        read_pipeline(path)
    path.write_text("data_pipeline_general\n\n_rlnPipeLineJobCounter 2\n")
    with pytest.raises(DataFormatError, match="no data_pipeline_processes"):
        read_pipeline(path)
