"""Merging two diverged copies of one project (hpcem.store.merge, docs/merge.md).

A project with a few finished runs is copied with shutil.copytree; each copy then runs
different new runs, and one shared run is continued in both. The merge must add every
new run once, renumber SOURCE's clashing ids with every pointer rewritten (inputs,
set lineage, files tables, step arguments and results, links), report the conflict and
leave it as TARGET has it, and change nothing at all when it is refused or killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from store_helpers import MP

from hpcem.errors import StoreError
from hpcem.store import Project, StepTable
from hpcem.store import merge as merge_mod
from hpcem.store.manifest import read_manifest
from hpcem.store.merge import merge
from hpcem.store.steps import append_steps


def finished_run(p: Project, protocol: str, inputs=(), n=4, label="") -> int:
    """A finished run with a set of ``n`` particles whose images are files in its own
    folder, lineage ``inputs``, and a step table whose args/result name its folder."""
    refs = list(inputs)
    r = p.create_run(protocol, label=label or protocol, params={"n": n}, inputs={"in": refs})
    p.begin_attempt(r.id, ("saved",))
    p.transition(r.id, ("launched",), "running", attempt=1)
    folder = p.run_dir(r.id) / "out"
    folder.mkdir()
    rel = f"runs/{r.id:06d}/out"
    for k in range(2):
        (folder / f"stack{k}.mrcs").write_bytes(f"run {r.id} stack {k}".encode())
    with p.create_set(r.id, "particles", "hpcem.SetOfParticles", inputs=refs, step="s1") as w:
        w.append_columns(
            {
                "image": [f"{rel}/stack{i % 2}.mrcs" for i in range(n)],
                "image_index": np.arange(n),
                "defocus_u": np.full(n, 10000.0 + r.id),
            }
        )
    p.set_output(r.id, "particles", "hpcem.SetOfParticles", n)
    steps = [
        {
            "id": "s1",
            "name": "work",
            "func": "m:f",
            "state": "finished",
            "args": {"out": rel, "input": refs[0] if refs else "", "k": 3},
            "result": {"path": f"{rel}/stack0.mrcs", "ref": f"{r.id}:particles"},
        }
    ]
    p.write_steps(r.id, StepTable.from_records(steps))
    p.controller_commit(r.id, 1, state="finished")
    return r.id


def tree_digest(path, skip_hpcem: bool = True) -> dict:
    """Every file, folder and link under ``path`` with its content hash (no .hpcem)."""
    out = {}
    for folder, dirs, files in os.walk(path):
        rel = os.path.relpath(folder, path)
        if skip_hpcem and rel.split(os.sep)[0] == ".hpcem":
            dirs[:] = []
            continue
        out[rel] = "dir"
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            full = os.path.join(folder, name)
            if os.path.islink(full):
                out[os.path.join(rel, name)] = "link:" + os.readlink(full)
            else:
                with open(full, "rb") as f:
                    out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def diverged(tmp_path):
    """(target, source): copies of one project with 2 shared runs; TARGET then ran run 3
    (from run 2), SOURCE ran runs 3 and 4 (4 from 3), and run 1 was labelled in SOURCE."""
    base = Project.create(tmp_path / "base")
    finished_run(base, "import")
    finished_run(base, "extract", ["1:particles"])
    shutil.copytree(base.path, tmp_path / "tgt", symlinks=True)
    shutil.copytree(base.path, tmp_path / "src", symlinks=True)
    target, source = Project.open(tmp_path / "tgt"), Project.open(tmp_path / "src")
    finished_run(target, "classify", ["2:particles"], label="t-classify")
    finished_run(source, "refine", ["2:particles"], label="s-refine")
    finished_run(source, "postprocess", ["3:particles", "1:particles"], label="s-post")
    source.set_label(1, "imported movies")
    # a step-log delta left after the last fold (a commit the run made as it ended)
    delta = {"id": "s2", "name": "late", "func": "m:g", "state": "finished"}
    append_steps(source.path / "runs/000004/steps.h5", 4, [{**delta, "args": {"o": "runs/000003"}}])
    return target, source


def test_merge_adds_new_runs_renumbered_with_pointers_rewritten(diverged):
    target, source = diverged
    before = {r.id: r for r in target.runs}
    report = merge(target.path, source.path)
    assert report.renumbered == {3: 4, 4: 5}
    assert sorted(report.same) == [(1, 1), (2, 2)]
    assert not report.conflicts and not report.held_back
    assert any("labelled" in n for n in report.notes)

    runs = {r.id: r for r in Project.open(target.path).runs}
    assert sorted(runs) == [1, 2, 3, 4, 5]  # every run of both copies, once
    for rid, rec in before.items():  # TARGET's own runs untouched
        assert runs[rid] == rec and runs[rid].label == rec.label
    src = {r.id: r for r in source.runs}
    assert runs[4].origin == src[3].origin and runs[5].origin == src[4].origin
    assert runs[4].label == "s-refine" and runs[5].label == "s-post"
    assert runs[5].inputs == {"in": ["4:particles", "1:particles"]}
    assert runs[4].state == "finished" and runs[4].output_sizes == {"particles": 4}

    # outputs readable, lineage and files tables point at the renumbered runs
    for new_id, old_id in ((4, 3), (5, 4)):
        s = target.open_set(new_id, "particles")
        assert len(s) == 4
        paths = s.columns["image"]
        assert all(p.startswith(str(target.path / f"runs/{new_id:06d}/out/")) for p in paths)
        s.check_files()  # MissingDataError if a renumbered path were wrong
        with open(paths[1], "rb") as f:  # the SOURCE file of its old run, byte for byte
            assert f.read() == f"run {old_id} stack 1".encode()
        np.testing.assert_array_equal(s.columns["defocus_u"], np.full(4, 10000.0 + old_id))
        with h5py.File(s.path / "manifest.h5", "r") as m:
            assert int(m.attrs["run_id"]) == new_id
    lineage = read_manifest(target.path / "runs/000005/sets/particles").inputs
    assert lineage == ["4:particles", "1:particles"]
    steps = target.read_steps(5).to_records()
    assert steps[0]["args"]["out"] == "runs/000005/out"
    assert steps[0]["args"]["input"] == "4:particles"
    assert steps[0]["result"] == {"path": "runs/000005/out/stack0.mrcs", "ref": "5:particles"}
    assert steps[1]["name"] == "late" and steps[1]["args"] == {"o": "runs/000004"}
    assert not list((target.path / "runs/000005").glob("steps-*.h5"))  # folded
    with h5py.File(target.path / "runs/000005/steps.h5", "r") as f:
        assert int(f.attrs["run_id"]) == 5
    # TARGET's own run 3 kept its own folder and files
    assert target.open_set(3, "particles").columns["defocus_u"][0] == 10003.0
    # new runs get ids after the merged ones
    assert target.create_run("next").id == 6
    assert not (target.path / ".hpcem" / "merge").exists() or not os.listdir(
        target.path / ".hpcem" / "merge"
    )


def test_merging_again_or_back_is_nothing_to_merge(diverged):
    target, source = diverged
    merge(target.path, source.path)
    digest = tree_digest(target.path)
    again = merge(target.path, source.path)
    assert again.nothing_to_merge and sorted(again.same) == [(1, 1), (2, 2), (3, 4), (4, 5)]
    assert tree_digest(target.path) == digest
    # the other way round: SOURCE gets TARGET's run 3 (as its run 5), nothing else
    back = merge(source.path, target.path)
    assert [(a.source_id, a.target_id) for a in back.added] == [(3, 5)]
    assert sorted(r.id for r in source.runs) == [1, 2, 3, 4, 5]
    assert merge(target.path, source.path).nothing_to_merge


def test_run_changed_on_both_sides_is_a_conflict_left_untouched(diverged, tmp_path):
    target, source = diverged
    # run 2 is restarted in both copies (a new attempt each): a true conflict
    for p in (target, source):
        p.begin_attempt(2, ("finished",))
        p.transition(2, ("launched",), "running", attempt=2)
        p.controller_commit(2, 2, state="failed" if p is source else "finished")
    t2 = target.run(2)
    digest2 = tree_digest(target.path / "runs/000002")
    report = merge(target.path, source.path)
    assert [(c.source_id, c.target_id) for c in report.conflicts] == [(2, 2)]
    assert any(
        "state finished in TARGET, failed in SOURCE" in d for d in report.conflicts[0].differences
    )
    assert "CONFLICT run 2" in "\n".join(report.lines())
    # SOURCE's runs 3 and 4 were made from SOURCE's run 2: held back, not added
    assert [s for s, _ in report.held_back] == [3, 4]
    assert report.nothing_to_merge
    assert target.run(2) == t2 and target.run(2).state == "finished"
    assert tree_digest(target.path / "runs/000002") == digest2


def rerun(p: Project, run_id: int, state: str) -> None:
    """Launch ``run_id`` again and end it in ``state``."""
    n = len(p.run(run_id).attempts) + 1
    p.begin_attempt(run_id, (p.run(run_id).state,))
    p.transition(run_id, ("launched",), "running", attempt=n)
    p.controller_commit(run_id, n, state=state)


def test_a_run_changed_in_one_copy_only_is_reported_with_its_side(diverged):
    target, source = diverged
    rerun(source, 2, "failed")  # SOURCE ran run 2 again after the copy, TARGET did not
    report = merge(target.path, source.path, dry_run=True)
    assert [(c.source_id, c.kind) for c in report.conflicts] == [(2, "newer_in_source")]
    assert "changed in SOURCE only" in "\n".join(report.lines())
    assert [s for s, _ in report.held_back] == [3, 4]
    # the other way: TARGET ran it again; TARGET's newer version is kept, no conflict,
    # and SOURCE's runs made from the older version are held back
    report = merge(source.path, target.path)
    assert not report.conflicts and report.nothing_to_merge
    assert any("run again in TARGET" in n for n in report.notes)
    assert report.held_back == [(3, "it was made from an older version of run 2")]


def test_refused_merges_leave_target_byte_identical(diverged, tmp_path):
    target, source = diverged
    digest = tree_digest(target.path, skip_hpcem=False)
    other = Project.create(tmp_path / "other")
    finished_run(other, "import")
    with pytest.raises(StoreError, match="unrelated projects"):
        merge(target.path, other.path)
    with pytest.raises(StoreError, match="same folder"):
        merge(target.path, target.path)
    os.symlink(target.path, tmp_path / "alias")
    with pytest.raises(StoreError, match="same folder"):
        merge(target.path, tmp_path / "alias")
    # a run still running in SOURCE
    r = source.create_run("late")
    source.begin_attempt(r.id, ("saved",))
    with pytest.raises(StoreError, match=r"runs still active: 5 \(launched\)"):
        merge(target.path, source.path)
    source.transition(r.id, ("launched",), "aborted", attempt=1)
    # a link planted where SOURCE keeps a set: refused, never followed
    victim = tmp_path / "victim.h5"
    victim.write_bytes(b"secret")
    seg = next((source.path / "runs/000003/sets/particles").glob("seg-*.h5"))
    seg.unlink()
    seg.symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link where hpcem keeps its own files"):
        merge(target.path, source.path)
    seg.unlink()
    # the run folder itself replaced by a link to a folder outside the project
    shutil.move(source.path / "runs/000004", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", source.path / "runs/000004")
    with pytest.raises(StoreError, match="000004 is a symbolic link.*not merged"):
        merge(target.path, source.path)
    # TARGET as it was, but for lock files and an empty staging folder under .hpcem/
    assert tree_digest(target.path) == {
        k: v for k, v in digest.items() if not k.startswith(".hpcem")
    }
    assert tree_digest(target.path, skip_hpcem=False)["./project.h5"] == digest["./project.h5"]
    assert not os.listdir(target.path / ".hpcem" / "merge")
    assert victim.read_bytes() == b"secret"


def test_links_in_protocol_folders_are_copied_as_links(diverged):
    target, source = diverged
    work = source.path / "runs/000004/relion"
    work.mkdir()
    os.symlink("../../000003/out/stack0.mrcs", work / "input.mrcs")  # RELION's input link
    os.symlink("/data/outside/movie.tif", work / "movie.tif")
    merge(target.path, source.path)
    new = target.path / "runs/000005/relion"
    assert os.readlink(new / "input.mrcs") == "../../000004/out/stack0.mrcs"
    assert (new / "input.mrcs").read_bytes() == b"run 3 stack 0"
    assert os.readlink(new / "movie.tif") == "/data/outside/movie.tif"


def test_projects_without_ids_fall_back_and_say_so(tmp_path):
    base = Project.create(tmp_path / "base")
    finished_run(base, "import")
    # an old project: no project id, runs without origin
    with h5py.File(base.path / "project.h5", "a") as f:
        del f.attrs["project_id"]
        g = f["runs/record_json"]
        texts = [t.decode().replace(f'"origin": "{base.run(1).origin}", ', "") for t in g[()]]
        g[...] = texts
    assert base.project_id is None and base.run(1).origin == ""
    shutil.copytree(base.path, tmp_path / "src", symlinks=True)
    source = Project.open(tmp_path / "src")
    finished_run(source, "extract", ["1:particles"])
    report = merge(base.path, source.path)
    assert [a.target_id for a in report.added] == [2] and report.same == [(1, 1)]
    assert any("neither project has a project id" in n for n in report.notes)
    assert any("matched by protocol, params, inputs and creation time" in n for n in report.notes)
    unrelated = Project.create(tmp_path / "new")
    with h5py.File(unrelated.path / "project.h5", "a") as f:
        del f.attrs["project_id"]
    with pytest.raises(StoreError, match="unrelated projects"):
        merge(base.path, unrelated.path)


def test_dry_run_changes_nothing(diverged):
    target, source = diverged
    digest = tree_digest(target.path, skip_hpcem=False)
    report = merge(target.path, source.path, dry_run=True)
    assert report.renumbered == {3: 4, 4: 5} and report.dry_run
    assert tree_digest(target.path, skip_hpcem=False) == digest


@pytest.mark.parametrize("side", ["TARGET", "SOURCE"])
def test_a_copy_changed_while_merging_is_refused(diverged, monkeypatch, side):
    target, source = diverged
    digest = tree_digest(target.path)
    stage = merge_mod._stage

    def stage_then_change(t, s, plan, folder):
        stage(t, s, plan, folder)
        (target if side == "TARGET" else source).create_run("meanwhile")

    monkeypatch.setattr(merge_mod, "_stage", stage_then_change)
    with pytest.raises(StoreError, match=f"{side} .* changed while the merge ran"):
        merge(target.path, source.path)
    if side == "TARGET":  # the run created meanwhile is the only change
        assert [r.protocol for r in target.runs][-1] == "meanwhile"
        digest.pop("./project.h5")
        assert {k: v for k, v in tree_digest(target.path).items() if k != "./project.h5"} == digest
    else:
        assert tree_digest(target.path) == digest


def test_a_copied_run_is_a_new_run_with_a_new_origin(project):
    from hpcem.execution import runs as lifecycle

    run = lifecycle.create_run(project, "test.trivial", {})
    copy = lifecycle.copy_run(project, run.id)
    assert len(run.origin) == 32 and copy.origin not in ("", run.origin)
    assert len(project.project_id) == 32


def test_failure_before_commit_moves_folders_back(diverged, monkeypatch):
    target, source = diverged
    digest = tree_digest(target.path)
    calls = []

    def failing_rename(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        os.rename(a, b)

    monkeypatch.setattr(merge_mod, "_rename", failing_rename)
    with pytest.raises(OSError):
        merge(target.path, source.path)
    assert tree_digest(target.path) == digest


def test_command_line_report_json_and_exit_status(diverged):
    from click.testing import CliRunner

    from hpcem.cli.commands_merge import merge_cmd

    target, source = diverged
    runner = CliRunner()
    assert "--dry-run" in runner.invoke(merge_cmd, ["--help"]).output
    dry = runner.invoke(merge_cmd, [str(target.path), str(source.path), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["renumbered"] == {"3": 4, "4": 5}
    assert sorted(r.id for r in target.runs) == [1, 2, 3]
    done = runner.invoke(merge_cmd, [str(target.path), str(source.path)])
    assert done.exit_code == 0, done.output
    assert "added run 3 as run 4: refine 's-refine'" in done.output
    for p in (target, source):  # now run 1 is continued in both copies
        p.begin_attempt(1, ("finished",))
        p.transition(1, ("launched",), "aborted", attempt=2)
    again = runner.invoke(merge_cmd, [str(target.path), str(source.path)])
    assert again.exit_code == 1 and "CONFLICT run 1" in again.output
    assert "1 conflicting and 0 held-back run(s)" in str(again.exception)  # 3, 4 merged
    refused = runner.invoke(merge_cmd, [str(target.path), str(target.path)])
    assert refused.exit_code != 0 and "same folder" in str(refused.exception)


def _merge_child(target, source, started):
    from hpcem.store.project import Project  # imported before the clock starts

    Project.open(target)
    started.set()
    merge(target, source)


def _merge_then_die(target, source):
    """Dies (SIGKILL) right after the first staged folder is renamed into runs/."""

    def rename_and_die(a, b):
        os.rename(a, b)
        os.kill(os.getpid(), signal.SIGKILL)

    merge_mod._rename = rename_and_die
    merge(target, source)


def test_killed_between_renames_and_commit_is_undone(diverged):
    target, source = diverged
    digest = tree_digest(target.path)
    child = MP.Process(target=_merge_then_die, args=(target.path, source.path))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert (target.path / "runs/000004").exists()  # renamed, never committed
    assert tree_digest(target.path)["./project.h5"] == digest["./project.h5"]
    assert sorted(r.id for r in target.runs) == [1, 2, 3]
    # a new run meets the leftover folder: it is set aside, not adopted
    r = target.create_run("new")
    assert r.id == 4 and not (target.path / "runs/000004").exists()
    assert merge_mod.recover(target)  # the staging folder is removed
    assert not os.listdir(target.path / ".hpcem" / "merge")
    after = tree_digest(target.path)
    del after["./project.h5"], digest["./project.h5"]  # run 4 was added since
    assert after == digest


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_old_or_merged_target(diverged, tmp_path):
    target, source = diverged
    pristine = tmp_path / "pristine"
    shutil.copytree(target.path, pristine, symlinks=True)
    digest = tree_digest(pristine)
    index = (pristine / "project.h5").read_bytes()
    t0 = time.monotonic()
    merge(target.path, source.path)
    duration = time.monotonic() - t0
    rng = np.random.default_rng(13)
    outcomes = []  # old / orphans (renamed, not committed) / merged: all three are seen
    for _ in range(12):
        shutil.rmtree(target.path)
        shutil.copytree(pristine, target.path, symlinks=True)
        started = MP.Event()
        child = MP.Process(target=_merge_child, args=(target.path, source.path, started))
        child.start()
        assert started.wait(20)
        time.sleep(float(rng.uniform(0, 1.2 * duration)))
        os.kill(child.pid, signal.SIGKILL)
        child.join(60)
        t = Project.open(target.path)
        if (target.path / "project.h5").read_bytes() == index:
            outcomes.append("old" if not (target.path / "runs/000004").exists() else "orphans")
            merge_mod.recover(t)
            assert tree_digest(target.path) == digest
        else:
            outcomes.append("merged")
            assert sorted(r.id for r in t.runs) == [1, 2, 3, 4, 5]
            for rid in (4, 5):
                t.open_set(rid, "particles").check_files()
        # either way the merge can be run (again) and ends merged
        merge(target.path, source.path)
        assert sorted(r.id for r in Project.open(target.path).runs) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_real_protocol_runs_merge_and_run_again_in_target(tmp_path):
    """Real runs (simulated micrographs, CTF estimation on them) in two copies: the
    renumbered runs' outputs, step arguments and lineage work in TARGET, where the CTF
    run is run again from its renumbered input."""
    from hpcem.execution import runs as lifecycle

    def simulate(p: Project, seed: int) -> int:
        params = {"kind": "micrographs", "n_items": 1, "size_px": 256, "pixel_size_A": 2.0}
        run = lifecycle.create_run(p, "sim.dataset", {**params, "seed": seed})
        lifecycle.launch(p, run.id, foreground=True)
        assert p.run(run.id).state == "finished", p.run(run.id).error
        return run.id

    base = Project.create(tmp_path / "base")
    simulate(base, 5)
    shutil.copytree(base.path, tmp_path / "tgt", symlinks=True)
    shutil.copytree(base.path, tmp_path / "src", symlinks=True)
    target, source = Project.open(tmp_path / "tgt"), Project.open(tmp_path / "src")
    simulate(target, 6)
    simulate(source, 7)
    ctf = lifecycle.create_run(
        source, "ctf.estimate", {}, inputs={"micrographs": ["2:micrographs"]}
    )
    lifecycle.launch(source, ctf.id, foreground=True)
    assert source.run(ctf.id).state == "finished", source.run(ctf.id).error

    report = merge(target.path, source.path)
    assert report.renumbered == {2: 3, 3: 4}
    mics = target.open_set(3, "micrographs")
    mics.check_files()
    for ours, theirs in zip(
        mics.columns["image"], source.open_set(2, "micrographs").columns["image"], strict=True
    ):
        assert ours.startswith(str(target.path / "runs/000003/"))
        assert Path(ours).read_bytes() == Path(theirs).read_bytes()
    args = json.dumps([s["args"] for s in target.read_steps(3).to_records()])
    assert "runs/000003/" in args and "runs/000002/" not in args
    assert target.run(4).inputs == {"micrographs": ["3:micrographs"]}
    fits = target.open_set(4, "ctfs")
    assert len(fits) == len(source.open_set(3, "ctfs"))
    # the renumbered CTF run runs again in TARGET from its renumbered input
    lifecycle.restart_run(target, 4, foreground=True)
    again = target.run(4)
    assert again.state == "finished", again.error
    np.testing.assert_allclose(
        target.open_set(4, "ctfs").columns["defocus_u"],
        source.open_set(3, "ctfs").columns["defocus_u"],
        rtol=1e-6,
    )
