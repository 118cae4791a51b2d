"""What a new user trips over (issue 8 §4): copies with changed parameters and distinct
labels, nonsense counts rejected, the batch job shown in the status table."""

from __future__ import annotations

import pytest

from hpcem.cli.main import main
from hpcem.execution import runs as lifecycle


@pytest.fixture
def dag(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return lifecycle.create_run(
        project, "test.dag", {"out_dir": str(out), "sleep_s": 0.0}, label="CTF"
    )


def test_copy_changes_parameters_with_the_same_validation(project, dag, capsys):
    assert main(["copy", str(project.path), str(dag.id), "--sleep-s", "0.25"]) == 0
    said = capsys.readouterr().out
    new = project.runs[-1]
    assert new.params == {**dag.params, "sleep_s": 0.25}
    assert new.label == "CTF (copy)" and new.state == "saved"
    assert f"saved as a copy of run {dag.id} with sleep_s=0.25" in said
    # out of range: refused like `hpcem run`, nothing stored
    assert main(["copy", str(project.path), str(dag.id), "--sleep-s", "-3"]) == 2
    assert "sleep_s" in capsys.readouterr().err
    assert main(["copy", str(project.path), str(dag.id), "--no-such", "1"]) == 2
    assert "no such option" in capsys.readouterr().err.lower()
    assert len(project.runs) == 2


def test_copies_get_distinct_labels(project, dag):
    labels = [lifecycle.copy_run(project, dag.id).label for _ in range(3)]
    again = lifecycle.copy_run(project, project.runs[-1].id).label  # a copy of a copy
    assert labels == ["CTF (copy)", "CTF (copy 2)", "CTF (copy 3)"] and again == "CTF (copy 4)"


@pytest.mark.parametrize("option", ["--workers", "--cores", "--nodes", "--max-blocks"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_nonsense_counts_are_refused_before_anything_is_stored(
    project, tmp_path, capsys, option, value
):
    code = main(
        [
            "run",
            str(project.path),
            "test.dag",
            "--out-dir",
            str(tmp_path),
            option,
            value,
            "--save-only",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and f"Invalid value for '{option}'" in err and len(err.strip().splitlines()) == 1
    )
    assert project.runs == []


def test_status_table_shows_the_batch_job(project, dag, capsys):
    project.begin_attempt(dag.id, ("saved",))
    project.update_attempt(
        dag.id, 1, job_id="53", site="local-slurm", scheduler="slurm", scheduler_state="PENDING"
    )
    from hpcem.execution.runs import summarize

    assert summarize(project.run(dag.id)).job == "slurm 53 PENDING"
    other = project.create_run("test.trivial", label="local one")
    capsys.readouterr()
    from hpcem.cli import commands_runs  # the table itself (status would also ask SLURM)

    rows = [summarize(r) for r in project.runs]
    commands_runs._print_table(project, rows)
    table = capsys.readouterr().out.splitlines()
    assert "JOB" in table[1]
    assert "slurm 53 PENDING" in next(line for line in table if line.startswith(f"{dag.id} "))
    assert next(line for line in table if line.startswith(f"{other.id} ")).split()[-2] == "-"


def test_an_inline_controller_leaves_the_callers_process_as_it_was(project, dag):
    import os
    import signal

    from hpcem.execution.runs import RUN_ENV

    def mine(*_):
        pass

    before = signal.signal(signal.SIGTERM, mine), signal.getsignal(signal.SIGINT)
    try:
        lifecycle.launch(project, dag.id, foreground=True)
        assert project.run(dag.id).state == "finished"
        assert signal.getsignal(signal.SIGTERM) is mine  # restored, not the controller's
        assert signal.getsignal(signal.SIGINT) is before[1]
        assert RUN_ENV not in os.environ
        # stop on it ends what the run left, never the caller (whose pid it recorded)
        assert project.run(dag.id).pid == os.getpid()
        with pytest.raises(Exception, match="not active"):
            lifecycle.stop_run(project, dag.id)
    finally:
        signal.signal(signal.SIGTERM, before[0])
