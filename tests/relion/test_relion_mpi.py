"""Which MPI launcher ``relion_refine_mpi`` gets (:mod:`hpcem.relion.mpi`).

Launchers are real files in a temporary PATH that print what the real ones print for
``--version`` (recorded from Open MPI 4.1.4's ``orterun``/``mpirun`` and MPICH 5.0's
Hydra ``mpirun``); the library a program is linked to is read with the real ``ldd`` from
real shared objects of the test environment and the installed RELION.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from relion_helpers import fake_program, site_file

from hpcem.errors import ValidationError
from hpcem.relion.mpi import (
    MPICH,
    OPEN_MPI,
    launcher_mpi,
    linked_mpi,
    mpi_launcher,
    mpi_of_version_text,
)

#: ``--version`` output of the real launchers (first lines).
ORTERUN_4 = "orterun (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/"
MPIRUN_OMPI_4 = "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/"
MPIRUN_OMPI_5 = "mpirun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/"
MPIRUN_HYDRA = (
    "HYDRA build details:\n    Version:                                 5.0.2\n"
    "    Configure options:                       --with-device=ch4:ucx,ofi --with-pm=hydra:gforker"
)


def launcher(folder: Path, name: str, version_text: str) -> Path:
    """An executable ``folder/name`` that prints ``version_text`` for ``--version``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    quoted = version_text.replace("'", "'\\''")
    path.write_text(
        f"#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then printf '%s\\n' '{quoted}'; fi\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def bin_dir(tmp_path, monkeypatch) -> Path:
    """An empty folder that is the whole PATH (with ``ldd``, which the choice uses)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    ldd = shutil.which("ldd")
    if ldd:
        (folder / "ldd").symlink_to(ldd)
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_the_site_command_is_used_as_given_and_a_bad_placeholder_is_refused(tmp_path, bin_dir):
    launcher(bin_dir, "orterun", ORTERUN_4)
    site = site_file(tmp_path / "s", {"relion_mpi_command": "srun --mpi=pmix -n {ranks}"})
    assert mpi_launcher(str(site), 5) == ["srun", "--mpi=pmix", "-n", "5"]
    bad = site_file(tmp_path / "b", {"relion_mpi_command": "srun -n {nodes}"})
    with pytest.raises(ValidationError, match=r"\[programs\] relion_mpi_command: 'nodes'"):
        mpi_launcher(str(bad), 3)


def test_orterun_comes_before_an_mpich_mpirun_earlier_on_path(tmp_path, bin_dir):
    launcher(bin_dir, "mpirun", MPIRUN_HYDRA)
    orterun = launcher(bin_dir, "orterun", ORTERUN_4)
    assert mpi_launcher(None, 3) == [str(orterun), "-n", "3"]


def test_an_open_mpi_mpirun_is_taken_when_there_is_no_orterun(bin_dir):
    mpirun = launcher(bin_dir, "mpirun", MPIRUN_OMPI_5)  # Open MPI 5 has no orterun
    assert mpi_launcher(None, 4) == [str(mpirun), "-n", "4"]


def test_only_an_mpich_launcher_is_refused_naming_it_and_the_site_setting(bin_dir):
    mpirun = launcher(bin_dir, "mpirun", MPIRUN_HYDRA)
    launcher(bin_dir, "mpiexec", "")  # prints nothing: not a known MPI
    with pytest.raises(ValidationError) as info:
        mpi_launcher(None, 3)
    text = str(info.value)
    assert f"{mpirun} is MPICH ('HYDRA build details:')" in text
    assert "mpiexec is not a known MPI ('no output')" in text
    assert "needs an Open MPI launcher" in text and "[programs] relion_mpi_command" in text


def test_no_launcher_at_all_is_refused(bin_dir):
    with pytest.raises(ValidationError, match="none of orterun, mpirun, mpiexec is on PATH"):
        mpi_launcher(None, 3)


def test_validation_reports_the_wrong_mpi_before_the_run(tmp_path, bin_dir):
    from hpcem.relion.refine import mpi_problems

    fake_program(tmp_path / "relion", "relion_refine_mpi")  # a script: ldd cannot tell
    site = site_file(tmp_path / "site", {"relion_bin": str(tmp_path / "relion")})
    launcher(bin_dir, "mpirun", MPIRUN_HYDRA)
    [problem] = mpi_problems(3, str(site))
    assert "assumed to be built on Open MPI" in problem and "is MPICH" in problem
    launcher(bin_dir, "orterun", ORTERUN_4)
    assert mpi_problems(3, str(site)) == []
    assert mpi_problems(1, str(site)) == []
    assert mpi_problems(2, str(site), at_least=3) == ["mpi_ranks 2: RELION needs at least 3 here"]


def test_version_texts_of_the_real_launchers():
    assert mpi_of_version_text(ORTERUN_4) == OPEN_MPI
    assert mpi_of_version_text(MPIRUN_OMPI_4) == OPEN_MPI
    assert mpi_of_version_text(MPIRUN_HYDRA) == MPICH
    assert mpi_of_version_text("Intel(R) MPI Library for Linux* OS, Version 2021.6") == MPICH
    assert mpi_of_version_text("usage: mpirun [options]") is None


def _mpi4py_variant(name: str) -> str:
    """A shared object of mpi4py built for one MPI (mpi4py ships one per MPI ABI)."""
    import importlib.util

    spec = importlib.util.find_spec("mpi4py")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mpi4py is not installed")
    found = glob.glob(os.path.join(spec.submodule_search_locations[0], f"MPI.{name}.*.so"))
    if not found:
        pytest.skip(f"this mpi4py has no MPI.{name} variant")
    return found[0]


def test_ldd_tells_open_mpi_from_mpich_on_real_libraries():
    if shutil.which("ldd") is None:
        pytest.skip("no ldd here")
    assert linked_mpi(_mpi4py_variant("openmpi")) == OPEN_MPI
    assert linked_mpi(_mpi4py_variant("mpich")) == MPICH
    assert linked_mpi("/bin/sh") is None  # not linked to MPI
    assert linked_mpi(__file__) is None  # not a dynamic executable


def test_an_mpich_linked_program_gets_an_mpich_launcher(bin_dir):
    if shutil.which("ldd") is None:
        pytest.skip("no ldd here")
    program = _mpi4py_variant("mpich")  # stands for an MPICH build of relion_refine_mpi
    launcher(bin_dir, "orterun", ORTERUN_4)
    hydra = launcher(bin_dir, "mpiexec.hydra", MPIRUN_HYDRA)
    assert mpi_launcher(None, 3, program) == [str(hydra), "-n", "3"]
    assert mpi_launcher(None, 3, _mpi4py_variant("openmpi"))[0].endswith("orterun")


def test_the_installed_relion_gets_open_mpi_though_mpich_comes_first_on_path(monkeypatch):
    """The case that started single-rank copies: the test environment's MPICH ``mpirun``
    first on PATH, Debian's Open MPI RELION behind it."""
    relion = shutil.which("relion_refine_mpi")
    venv_mpirun = Path(os.path.dirname(os.path.abspath(sys.executable))) / "mpirun"
    if relion is None or shutil.which("orterun") is None:
        pytest.skip("relion_refine_mpi or Open MPI's orterun is not installed")
    if not venv_mpirun.exists() or launcher_mpi(str(venv_mpirun))[0] != MPICH:
        pytest.skip("no MPICH mpirun in this Python environment")
    if linked_mpi(relion) != OPEN_MPI:
        pytest.skip(f"{relion} is not linked to Open MPI")
    monkeypatch.setenv("PATH", f"{venv_mpirun.parent}{os.pathsep}{os.environ['PATH']}")
    argv = mpi_launcher(None, 3, relion)
    assert Path(argv[0]).name == "orterun" and argv[1:] == ["-n", "3"]
