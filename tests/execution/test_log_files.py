"""`hpcem log --file`: the logs external programs leave in a run folder (relion.log) are
named after run.log and shown on request; anything but a .log file of the run folder is
refused."""

import numpy as np

from hpcem.cli.main import main
from hpcem.execution import runs as lifecycle
from hpcem.io import write_mrc


def test_other_logs_are_named_and_shown(project, tmp_path, wait_for_run, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mrc(raw / "m.mrc", np.zeros((64, 64), np.float32) + 1, 2.0)
    run = lifecycle.create_run(
        project, "import.micrographs", {"files": str(raw / "*.mrc"), "pixel_size_A": 2.0}
    )
    lifecycle.launch(project, run.id, workers=1)
    assert wait_for_run(project, run.id).state == "finished"
    (project.run_dir(run.id) / "relion.log").write_text("$ relion_autopick --i x\nhello\n")
    capsys.readouterr()
    assert main(["log", str(project.path), str(run.id)]) == 0
    out = capsys.readouterr()
    assert "relion.log" in out.err and "hello" not in out.out
    assert main(["log", str(project.path), str(run.id), "--file", "relion.log"]) == 0
    assert capsys.readouterr().out == "$ relion_autopick --i x\nhello\n"
    assert main(["log", str(project.path), str(run.id), "--file", "../project.h5"]) != 0
    assert main(["log", str(project.path), str(run.id), "--file", "nothing.log"]) != 0
    assert "has no nothing.log" in capsys.readouterr().err
