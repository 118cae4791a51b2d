"""``hpcem import-relion``: a RELION project made here by RELION's own pipeliner
(relion_pipeliner: Import -> LoG AutoPick -> Extract on small micrographs) imported as
hpcem runs with lineage; values checked against starfile's reading of RELION's files.
The job graph of a real tutorial project (starfile's default_pipeline.star) is imported
without its files: nothing is half-imported."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import starfile
from click.testing import CliRunner
from hpcem.protocols.import_relion_project import import_relion_project

from hpcem.command import run_command
from hpcem.io import write_mrc

PIXEL_A = 2.0


def _pipeliner(folder, *args):
    run_command(["relion_pipeliner", *args], cwd=folder, timeout_s=300)


def _job_star(path, job_type: int, options: dict) -> str:
    rows = "\n".join(f"{k} {v}" for k, v in options.items())
    path.write_text(
        f"data_job\n\n_rlnJobType {job_type}\n_rlnJobIsContinue 0\n\n"
        "data_joboptions_values\n\nloop_\n_rlnJobOptionVariable #1\n"
        f"_rlnJobOptionValue #2\n{rows}\n"
    )
    return str(path)


def _run_job(folder, job_type: int, options: dict, name: str) -> None:
    star = _job_star(folder / f"{name.split('/')[0]}.job.star", job_type, options)
    _pipeliner(folder, "--addJobFromStar", star)
    _pipeliner(folder, "--RunJobs", name, "--sec_wait_after", "0")
    assert (folder / name / "RELION_JOB_EXIT_SUCCESS").exists(), folder / name / "run.err"


@pytest.fixture(scope="module")
def relion_project(tmp_path_factory):
    for program in ("relion_pipeliner", "relion_import", "relion_autopick", "relion_preprocess"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (Debian package relion)")
    folder = tmp_path_factory.mktemp("relion")
    (folder / "mics").mkdir()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    for i in range(2):
        image = rng.normal(0, 1, (256, 256)).astype(np.float32)
        for cx, cy in rng.uniform(30, 226, (12, 2)):  # dark blobs of 50 Å: LoG finds them
            image -= 4 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 6.0**2))
        write_mrc(folder / "mics" / f"m{i}.mrc", image, PIXEL_A)
    (folder / "default_pipeline.star").write_text(
        "data_pipeline_general\n\n_rlnPipeLineJobCounter 1\n"
    )
    _run_job(
        folder,
        0,
        {
            "do_raw": "Yes",
            "fn_in_raw": "mics/*.mrc",
            "is_multiframe": "No",
            "angpix": PIXEL_A,
            "kV": 300,
            "Cs": 2.7,
            "Q0": 0.1,
            "optics_group_name": "opticsGroup1",
            "do_queue": "No",
        },
        "Import/job001/",
    )
    _run_job(
        folder,
        4,
        {
            "fn_input_autopick": "Import/job001/micrographs.star",
            "do_log": "Yes",
            "log_diam_min": 40,
            "log_diam_max": 60,
            "angpix": -1,
            "gpu_ids": '""',
            "use_gpu": "No",
            "do_queue": "No",
        },
        "AutoPick/job002/",
    )
    _run_job(folder, 5, _extract(32), "Extract/job003/")
    return folder


def _extract(box: int) -> dict:
    return {
        "star_mics": "Import/job001/micrographs.star",
        "coords_suffix": "AutoPick/job002/coords_suffix_autopick.star",
        "extract_size": box,
        "do_rescale": "No",
        "do_norm": "Yes",
        "bg_diameter": -1,
        "do_invert": "No",
        "do_queue": "No",
        "nr_mpi": 1,
    }


@pytest.mark.slow  # RELION's programs make the project once (~5 s)
def test_relion_project_imports_with_lineage(project, relion_project):
    rows = import_relion_project(project, str(relion_project))
    assert [(r["job"], r["state"]) for r in rows] == [
        ("Import/job001/", "finished"),
        ("AutoPick/job002/", "finished"),
        ("Extract/job003/", "finished"),
    ]
    runs = {r["job"]: r["run"] for r in rows}
    mic_run, pick_run, ext_run = (
        runs["Import/job001/"],
        runs["AutoPick/job002/"],
        runs["Extract/job003/"],
    )
    assert project.run(pick_run).inputs == {"upstream": [f"{mic_run}:micrographs"]}
    assert project.run(ext_run).inputs == {
        "upstream": [f"{mic_run}:micrographs", f"{pick_run}:coordinates"]
    }
    assert project.run(ext_run).params["job_type"] == "relion.extract"
    mics = project.open_set(mic_run, "micrographs")
    id_of = {
        os.path.relpath(str(p), relion_project): int(i)
        for p, i in zip(mics.column("image"), mics.column("id"))
    }
    assert sorted(id_of) == ["mics/m0.mrc", "mics/m1.mrc"]
    np.testing.assert_allclose(mics.optics["pixel_size_A"], PIXEL_A)

    # coordinates: RELION's per-micrograph STARs, read by starfile
    coords = project.open_set(pick_run, "coordinates")
    for name, mid in id_of.items():
        stem = os.path.splitext(os.path.basename(name))[0]
        ref = starfile.read(relion_project / "AutoPick/job002/mics" / f"{stem}_autopick.star")
        on = coords.column("micrograph_id") == mid
        assert on.sum() == len(ref) > 0
        np.testing.assert_allclose(coords.column("x")[on], ref["rlnCoordinateX"], atol=1e-3)
        np.testing.assert_allclose(coords.column("y")[on], ref["rlnCoordinateY"], atol=1e-3)

    # particles: RELION's Extract output
    parts = project.open_set(ext_run, "particles")
    ref = starfile.read(relion_project / "Extract/job003/particles.star")
    p = ref["particles"]
    assert len(parts) == len(p)
    np.testing.assert_allclose(parts.column("coord_x"), p["rlnCoordinateX"], atol=1e-3)
    assert parts.column("image_index").tolist() == [
        int(n.split("@")[0]) - 1 for n in p["rlnImageName"]
    ]
    assert parts.column("micrograph_id").tolist() == [id_of[m] for m in p["rlnMicrographName"]]
    assert all(os.path.exists(f) for f in set(parts.column("image").tolist()))
    assert parts.optics["image_size_px"].tolist() == [32]

    # the same STAR through import.particles, with the micrographs as its optional input
    from hpcem.execution import runs as lifecycle

    run = lifecycle.create_run(
        project,
        "import.particles",
        {"file": str(relion_project / "Extract/job003/particles.star")},
        {"micrographs": [f"{mic_run}:micrographs"]},
    )
    assert lifecycle.launch(project, run.id, workers=1, foreground=True).state == "finished"
    again = project.open_set(run.id, "particles")
    assert again.column("micrograph_id").tolist() == parts.column("micrograph_id").tolist()
    assert again.column("image").tolist() == parts.column("image").tolist()  # root found


@pytest.mark.slow  # RELION's programs make the project once (~5 s)
def test_reimport_adds_only_new_jobs_and_cli(project, relion_project):
    """RELION goes on (a second extraction with a 48 px box): import-relion again imports
    that job alone, through the command line."""
    from hpcem.cli.commands_convert import import_relion_cmd

    first = import_relion_project(project, str(relion_project))
    copy = relion_project.parent / "relion_more"
    if not copy.exists():
        shutil.copytree(relion_project, copy, symlinks=True)
        _run_job(copy, 5, _extract(48), "Extract/job004/")
    # the copy is another RELION folder: its jobs are not the first folder's
    result = CliRunner().invoke(import_relion_cmd, [str(project.path), str(copy)])
    assert result.exit_code == 0, result.output
    assert "4 job(s) imported" in result.output
    result = CliRunner().invoke(import_relion_cmd, [str(project.path), str(copy)])
    assert result.exit_code == 0 and "0 job(s) imported" in result.output
    runs = {r.params["job"]: r for r in project.runs if r.params.get("relion_dir") == str(copy)}
    assert runs["Extract/job004/"].output_sizes["particles"] > 0
    assert len(project.runs) == len(first) + 4
    new = project.open_set(runs["Extract/job004/"].id, "particles")
    assert new.optics["image_size_px"].tolist() == [48]


def test_tutorial_graph_without_files_imports_nothing_half(project, shared_data, tmp_path):
    """starfile's default_pipeline.star (31 jobs of the RELION tutorial) without the job
    files: the first job fails naming its missing file, every job downstream is skipped."""
    folder = tmp_path / "tutorial"
    folder.mkdir()
    shutil.copy(shared_data / "starfile-0.5.13/default_pipeline.star", folder)
    rows = import_relion_project(project, str(folder))
    assert len(rows) == 31
    assert rows[0]["job"] == "Import/job001/" and rows[0]["state"] == "failed"
    assert "movies.star" in rows[0]["note"]
    assert all(r["state"] == "skipped" for r in rows[1:])
    assert "upstream job" in rows[1]["note"]
    failed = project.run(rows[0]["run"])
    assert failed.output_types == {}


@pytest.mark.slow  # RELION's programs make the project once (~5 s)
def test_export_relion_and_cs(project, relion_project, tmp_path):
    """The way back: the imported particles written as RELION 3.1 STAR (read by starfile)
    and as a cryoSPARC .cs (loaded by cryosparc-tools when installed)."""
    from hpcem.cli.commands_convert import export_relion_cmd

    rows = import_relion_project(project, str(relion_project))
    ext = next(r["run"] for r in rows if r["job"] == "Extract/job003/")
    parts = project.open_set(ext, "particles")
    out = tmp_path / "back.star"
    res = CliRunner().invoke(
        export_relion_cmd, [str(project.path), f"{ext}:particles", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    back = starfile.read(out)
    src = starfile.read(relion_project / "Extract/job003/particles.star")
    np.testing.assert_allclose(
        back["particles"]["rlnCoordinateX"], src["particles"]["rlnCoordinateX"], atol=1e-3
    )
    stacks = [n.split("@")[1] for n in back["particles"]["rlnImageName"]]
    assert all(os.path.isabs(s) and s.endswith(".mrcs") for s in stacks)
    assert back["optics"]["rlnImageSize"].tolist() == [32]
    cs = tmp_path / "back.cs"
    res = CliRunner().invoke(
        export_relion_cmd, [str(project.path), f"{ext}:particles", "-o", str(cs), "--cs"]
    )
    assert res.exit_code == 0, res.output
    dataset = pytest.importorskip("cryosparc.dataset")
    d = dataset.Dataset.load(str(cs))
    assert len(d) == len(parts)
    assert d["blob/idx"].tolist() == parts.column("image_index").tolist()
    mic = next(r["run"] for r in rows if r["job"] == "AutoPick/job002/")
    res = CliRunner().invoke(
        export_relion_cmd, [str(project.path), f"{mic}:coordinates", "-o", str(out)]
    )
    assert res.exit_code != 0 and "SetOfCoordinates" in str(res.exception)


PIPELINE_CTF = """
# version 30001

data_pipeline_general

_rlnPipeLineJobCounter 3

data_pipeline_processes

loop_
_rlnPipeLineProcessName #1
_rlnPipeLineProcessAlias #2
_rlnPipeLineProcessTypeLabel #3
_rlnPipeLineProcessStatusLabel #4
Import/job001/ None relion.importmovies Succeeded
CtfFind/job002/ CtfFind/ctffind4/ relion.ctffind.ctffind4 Succeeded

data_pipeline_nodes

loop_
_rlnPipeLineNodeName #1
_rlnPipeLineNodeTypeLabel #2
Import/job001/micrographs.star MicrographGroupMetadata.star.relion
CtfFind/job002/micrographs_ctf.star MicrographGroupMetadata.star.relion.ctf
CtfFind/job002/logfile.pdf LogFile.pdf.relion.ctffind

data_pipeline_input_edges

loop_
_rlnPipeLineEdgeFromNode #1
_rlnPipeLineEdgeProcess #2
Import/job001/micrographs.star CtfFind/job002/

data_pipeline_output_edges

loop_
_rlnPipeLineEdgeProcess #1
_rlnPipeLineEdgeToNode #2
Import/job001/ Import/job001/micrographs.star
CtfFind/job002/ CtfFind/job002/micrographs_ctf.star
CtfFind/job002/ CtfFind/job002/logfile.pdf
"""


def test_ctffind_job_gives_micrographs_and_linked_ctfs(project, tmp_path):
    """A RELION 4 CtfFind job (pipeline and STARs written here with starfile, as RELION
    lays them out): its micrographs_ctf.star becomes a micrograph set and a CTF set whose
    micrograph_id are those micrographs' ids; the log is listed as not imported."""
    import pandas as pd

    root = tmp_path / "rel"
    (root / "mics").mkdir(parents=True)
    (root / "Import/job001").mkdir(parents=True)
    (root / "CtfFind/job002").mkdir(parents=True)
    for i in range(3):
        write_mrc(root / "mics" / f"m{i}.mrc", np.zeros((64, 64), np.float32), PIXEL_A)
    (root / "CtfFind/job002/logfile.pdf").write_text("")
    (root / "default_pipeline.star").write_text(PIPELINE_CTF)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographPixelSize": [PIXEL_A],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    names = [f"mics/m{i}.mrc" for i in range(3)]
    starfile.write(
        {
            "optics": optics,
            "micrographs": pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": 1}),
        },
        root / "Import/job001/micrographs.star",
    )
    dfu = [12000.5, 15000.25, 9000.0]
    ctf = pd.DataFrame(
        {
            "rlnMicrographName": names[::-1],
            "rlnOpticsGroup": 1,
            "rlnCtfImage": [f"CtfFind/job002/mics/m{i}.ctf:mrc" for i in (2, 1, 0)],
            "rlnDefocusU": dfu[::-1],
            "rlnDefocusV": [d - 300 for d in dfu[::-1]],
            "rlnDefocusAngle": [10.0, 20.0, 30.0],
            "rlnCtfFigureOfMerit": [0.1, 0.2, 0.3],
            "rlnCtfMaxResolution": [4.0, 5.0, 6.0],
        }
    )
    starfile.write(
        {"optics": optics, "micrographs": ctf}, root / "CtfFind/job002/micrographs_ctf.star"
    )
    rows = import_relion_project(project, str(root))
    assert [r["state"] for r in rows] == ["finished", "finished"], rows
    run = project.run(rows[1]["run"])
    assert run.label == "RELION CtfFind/job002 (CtfFind/ctffind4/)"
    assert sorted(run.output_types) == ["ctfs", "micrographs"]
    mics = project.open_set(run.id, "micrographs")
    ctfs = project.open_set(run.id, "ctfs")
    name_of = {
        int(i): os.path.relpath(str(p), root)
        for i, p in zip(mics.column("id"), mics.column("image"))
    }
    got = {
        name_of[int(m)]: float(u)
        for m, u in zip(ctfs.column("micrograph_id"), ctfs.column("defocus_u"))
    }
    assert got == {n: pytest.approx(d) for n, d in zip(names, dfu)}
    assert set(ctfs.column("estimator").tolist()) == {"relion"}
    steps = {r["name"]: r for r in project.read_steps(run.id).to_records()}
    skipped = steps["register"]["result"]["not_imported"]
    assert [s["node"] for s in skipped] == ["CtfFind/job002/logfile.pdf"]
