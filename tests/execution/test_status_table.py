"""The fast table of ``hpcem status PROJECT`` (hpcem.cli.status_table): the same text as
a plain row-by-row rendering of the run records, from every index layout, and without
loading click or the record classes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from hpcem.cli.main import main
from hpcem.store import index


def _reference(project) -> str:
    """The table written out row by row from the records, the way it is specified: each
    cell padded to its column's width, two spaces between columns, the label made safe
    and cut to 30 characters, a JOB column only where some run is a batch job."""
    from hpcem.execution.runs import summarize

    rows = []
    for r in sorted(project.runs, key=lambda r: r.id):
        s = summarize(r)
        label = "".join(c if c.isprintable() else repr(c)[1:-1] for c in r.label)[:30]
        if not s.elapsed_s:
            elapsed = "-"
        else:
            h, rest = divmod(int(s.elapsed_s), 3600)
            elapsed = (
                f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
            )
        outputs = ", ".join(
            f"{n}({o['size']})" if o["size"] is not None else n for n, o in s.outputs.items()
        )
        rows.append(
            [str(r.id), label, r.protocol, s.state, f"{s.steps_done}/{s.steps_total}", elapsed]
            + [s.job or "-"]
            + [outputs or "-"]
        )
    header = ["ID", "LABEL", "PROTOCOL", "STATE", "STEPS", "ELAPSED", "JOB", "OUTPUTS"]
    if not any(r.job_text for r in project.runs):
        header.pop(6)
        rows = [row[:6] + row[7:] for row in rows]
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in table]
    n = len(rows)
    return "\n".join([f"project {project.path}: {n} run{'s' if n != 1 else ''}", *lines]) + "\n"


def _finish(project, run_id, *, seconds, outputs=(), **attempt):
    """Take a saved run to finished, as its controller would, ``seconds`` long."""
    project.begin_attempt(run_id, ("saved",))
    t0 = time.time() - 100
    project.transition(run_id, ("launched",), "running", attempt=1, started=t0, **attempt)
    for name, size in outputs:
        project.set_output(run_id, name, "hpcem.SetOfParticles", size, attempt=1)
    project.controller_commit(
        run_id,
        1,
        state="finished",
        steps_done=3,
        steps_total=3,
        attempt_fields={"ended": t0 + seconds, "outcome": "finished"},
    )


@pytest.fixture
def varied(project):
    """Runs of every kind the table shows: labels with non-ASCII, control characters
    and more than 30 characters, no time and under a second, hours, several outputs, a
    finished batch job (its JOB column), one run still saved."""
    labels = [
        "plain",
        "µ-grids, défocus scan",
        "a label much longer than thirty characters",
        "",
        "tab",
        "job",
    ]
    runs = [project.create_run("test.trivial", label=label) for label in labels]
    _finish(project, runs[0].id, seconds=0.0)
    _finish(project, runs[1].id, seconds=0.4, outputs=[("particles", 12), ("coords", 0)])
    _finish(project, runs[2].id, seconds=3 * 3600 + 62.7, outputs=[("micrographs", 5)])
    _finish(project, runs[3].id, seconds=59.9)
    _finish(
        project,
        runs[5].id,
        seconds=61,
        job_id="53",
        site="local-slurm",
        scheduler="slurm",
        scheduler_state="COMPLETED",
        scheduler_final=True,
    )
    with h5py.File(project.index_path, "r+", locking=False) as f:  # an old index's label
        f["runs/label"][4] = "tab\there \x1b[2J"
    return project


def _status(project, capsys) -> str:
    capsys.readouterr()
    assert main(["status", str(project.path)]) == 0
    return capsys.readouterr().out


def test_table_is_the_records_written_row_by_row(varied, capsys):
    shown = _status(varied, capsys)
    assert shown == _reference(varied)
    assert "\x1b" not in shown and "tab\\there \\x1b[2J" in shown
    assert "slurm 53 COMPLETED" in shown and "µ-grids, défocus scan" in shown
    assert "3:01:02" in shown and "0:00" in shown  # hours; 0.4 s is not "no time"


def test_live_runs_are_read_as_records_and_sorted_in(varied, capsys):
    extra = varied.create_run("test.trivial", label="launched, never started")
    varied.begin_attempt(extra.id, ("saved",))  # live: active, no controller
    saved = varied.create_run("test.trivial", label="saved later")
    shown = _status(varied, capsys)
    assert shown == _reference(varied)
    ids = [int(line.split()[0]) for line in shown.splitlines()[2:]]
    assert ids == sorted(ids) and {extra.id, saved.id} <= set(ids)


def _older_layout(project, summaries: bool) -> None:
    """Rewrite the index as hpcem wrote it before: string summaries as vlen datasets
    and no protocol copy, or (``summaries=False``) no summary columns at all."""
    with h5py.File(project.index_path, "r+", locking=False) as f:
        g = f["runs"]
        texts = index.decode_summary_text(g[index.SUMMARY_TEXT], len(g["id"]))
        del g[index.SUMMARY_TEXT]
        for name in ("started", "ended", "job_open", "n_blocks"):
            if not summaries:
                del g[name]
        if summaries:
            for name in ("job", "outputs_text"):
                g.create_dataset(name, data=texts[name], dtype=h5py.string_dtype())


@pytest.mark.parametrize("summaries", [True, False], ids=["vlen-summaries", "no-summaries"])
def test_indexes_of_older_layouts_give_the_same_table(varied, capsys, summaries):
    before = _status(varied, capsys)
    _older_layout(varied, summaries)
    assert _status(varied, capsys) == before
    cols = type(varied).open(varied.path).summary_columns()
    assert list(cols["protocol_text"]) == list(cols["protocol"]) == ["test.trivial"] * 6
    # the next commit writes the current layout again
    varied.set_label(1, "renamed")
    with h5py.File(varied.index_path, "r", locking=False) as f:
        assert index.SUMMARY_TEXT in f["runs"] and "job" not in f["runs"]
    assert _status(varied, capsys) == _reference(varied)


def test_summary_text_round_trip(tmp_path):
    cols = {
        "job": np.array(["slurm 1 RUNNING", "", "pbs 2.x Q"], dtype=object),
        "outputs_text": np.array(["a(1), b", "", "é(3)"], dtype=object),
        "protocol_text": np.array(["p.one", "p.two", "nul\0inside"], dtype=object),
    }
    with h5py.File(tmp_path / "t.h5", "w") as f:
        index.write_summary_text(f, cols)
        index.write_summary_text(f.create_group("empty"), {k: v[:0] for k, v in cols.items()})
        back = index.decode_summary_text(f[index.SUMMARY_TEXT], 3)
        assert index.decode_summary_text(f["empty"][index.SUMMARY_TEXT], 0)["job"].size == 0
        with pytest.raises(ValueError, match="holds 3 texts for 2 runs"):
            index.decode_summary_text(_cut(f), 2)
    assert list(back["job"]) == list(cols["job"])
    assert list(back["outputs_text"]) == list(cols["outputs_text"])
    assert list(back["protocol_text"]) == ["p.one", "p.two", "nul\ufffdinside"]


def _cut(f):
    """A SUMMARY_TEXT of the wrong length: one run's texts only."""
    g = f.create_group("cut")
    data = f[index.SUMMARY_TEXT][()]
    end = int(np.flatnonzero(data == 0)[2])
    ds = g.create_dataset(index.SUMMARY_TEXT, data=data[:end])
    ds.attrs["columns"] = f[index.SUMMARY_TEXT].attrs["columns"]
    return ds


def test_the_plain_table_loads_neither_click_nor_the_records(varied):
    code = (
        "import sys; from hpcem.cli.main import main; main(['status', sys.argv[1]]); "
        "print(sorted(m for m in ('click', 'hpcem.store.project', 'hpcem.store.record', "
        "'hpcem.execution.runs') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(varied.path)], capture_output=True, text=True, check=True
    )
    assert out.stderr.strip().splitlines()[-1] == "[]"
    assert out.stdout == _reference(varied)


def test_records_are_checked_a_block_at_a_time(varied, capsys, monkeypatch):
    monkeypatch.setattr(index, "RECORD_BLOCK", 2)  # six runs: three blocks
    with h5py.File(varied.index_path, "r+", locking=False) as f:
        f["runs/record_json"][4] = '{"params": {}, "inputs": '  # run 5, the third block
        f["runs/record_json"][1] = "not even json"  # run 2, the first block
    capsys.readouterr()
    assert main(["status", str(varied.path)]) == 0
    out, err = capsys.readouterr()
    assert out == _reference(varied) and [r.id for r in varied.runs] == [1, 3, 4, 6]
    assert "the record of run 2 is damaged" in err and "the record of run 5 is damaged" in err


def test_json_lists_every_run_from_its_record(varied, capsys):
    live = varied.create_run("test.trivial", label="launched")
    varied.begin_attempt(live.id, ("saved",))
    with h5py.File(varied.index_path, "r+", locking=False) as f:
        f["runs/record_json"][2] = "{damaged"  # run 3
    capsys.readouterr()
    assert main(["status", str(varied.path), "--json"]) == 0
    out, err = capsys.readouterr()
    runs = {r["id"]: r for r in json.loads(out)["runs"]}
    assert sorted(runs) == [1, 2, 4, 5, 6, live.id] and "run 3 is damaged" in err
    assert runs[2]["outputs"] == {
        "particles": {"type": "hpcem.SetOfParticles", "size": 12},
        "coords": {"type": "hpcem.SetOfParticles", "size": 0},
    }
    assert runs[6]["job"] == "slurm 53 COMPLETED" and runs[5]["state"] == "saved"
