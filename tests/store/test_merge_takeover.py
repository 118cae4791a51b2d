"""A run continued only in SOURCE is taken over by the merge (hpcem.store.merge).

Two copies of a project share runs 1 (import) and 2 (extract, from run 1). SOURCE then
runs run 2 again (a new attempt that writes a new, larger output set) and makes run 3
from it; TARGET makes its own run 3 from run 1. TARGET's run 2 never changed since the
copy (its attempts are a prefix of SOURCE's), so the merge must replace it by SOURCE's
version — record, folder, sets and step log — and add SOURCE's run 3 (as run 4) with its
lineage pointing at the taken-over run; unless a run of TARGET uses the outputs of run 2
that SOURCE does not have, or run 2 is still active in TARGET, or its params differ. A
SIGKILL at any rename of the commit leaves TARGET recoverable to exactly before, or (after
the index commit) exactly merged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
from store_helpers import MP
from test_merge import finished_run, tree_digest

from hpcem.store import Project, StepTable
from hpcem.store import merge as merge_mod
from hpcem.store.manifest import read_manifest
from hpcem.store.merge import merge


def continue_run(p: Project, run_id: int, n: int) -> None:
    """Run ``run_id`` again from scratch: a new attempt, a new set of ``n`` particles
    with new files and values, a new step table; it ends finished."""
    rec = p.run(run_id)
    attempt = len(rec.attempts) + 1
    p.begin_attempt(run_id, (rec.state,), reset=True)
    p.transition(run_id, ("launched",), "running", attempt=attempt)
    shutil.rmtree(p.run_dir(run_id) / "sets", ignore_errors=True)
    rel = f"runs/{run_id:06d}/out"
    (p.path / rel).mkdir(exist_ok=True)
    for k in range(2):
        (p.path / rel / f"stack{k}.mrcs").write_bytes(f"run {run_id} again {k}".encode())
    refs = rec.inputs["in"]
    with p.create_set(run_id, "particles", "hpcem.SetOfParticles", inputs=refs) as w:
        w.append_columns(
            {
                "image": [f"{rel}/stack{i % 2}.mrcs" for i in range(n)],
                "image_index": np.arange(n),
                "defocus_u": np.full(n, 20000.0 + run_id),
            }
        )
    p.set_output(run_id, "particles", "hpcem.SetOfParticles", n)
    step = {"id": "s1", "name": "work", "func": "m:f", "state": "finished"}
    p.write_steps(run_id, StepTable.from_records([{**step, "args": {"out": rel, "again": 1}}]))
    p.controller_commit(run_id, attempt, state="finished")


def copies(tmp_path, shared_consumer: bool = False):
    base = Project.create(tmp_path / "base")
    finished_run(base, "import")
    finished_run(base, "extract", ["1:particles"])
    if shared_consumer:  # run 3 used run 2's outputs before the copy (in both copies)
        finished_run(base, "classify", ["2:particles"], label="shared")
    shutil.copytree(base.path, tmp_path / "tgt", symlinks=True)
    shutil.copytree(base.path, tmp_path / "src", symlinks=True)
    return Project.open(tmp_path / "tgt"), Project.open(tmp_path / "src")


@pytest.fixture
def continued(tmp_path):
    """(target, source): SOURCE ran run 2 again and made run 3 from it; TARGET made its
    own run 3 from run 1 (not from run 2)."""
    target, source = copies(tmp_path)
    finished_run(target, "classify", ["1:particles"], label="t-classify")
    continue_run(source, 2, n=6)
    finished_run(source, "refine", ["2:particles"], label="s-refine")
    return target, source


def test_a_run_continued_in_source_only_is_taken_over(continued):
    target, source = continued
    keep = {r: tree_digest(target.path / f"runs/{r:06d}") for r in (1, 3)}
    report = merge(target.path, source.path)
    assert [(t.source_id, t.target_id) for t in report.taken_over] == [(2, 2)]
    assert "attempts differ (1 in TARGET, 2 in SOURCE)" in report.taken_over[0].differences
    assert report.renumbered == {3: 4} and report.same == [(1, 1)]
    assert not report.conflicts and not report.held_back
    assert "took over run 2 (TARGET run 2): extract" in "\n".join(report.lines())

    t2, s2 = target.run(2), source.run(2)
    assert t2 == s2 and len(t2.attempts) == 2 and t2.output_sizes == {"particles": 6}
    # its outputs are SOURCE's new ones, readable in TARGET with their files
    parts = target.open_set(2, "particles")
    parts.check_files()
    assert len(parts) == 6
    np.testing.assert_array_equal(parts.columns["defocus_u"], np.full(6, 20002.0))
    assert parts.columns["image"][1].startswith(str(target.path / "runs/000002/out/"))
    with open(parts.columns["image"][1], "rb") as f:
        assert f.read() == b"run 2 again 1"
    assert target.read_steps(2).to_records()[0]["args"] == {"out": "runs/000002/out", "again": 1}
    assert tree_digest(target.path / "runs/000002") == tree_digest(source.path / "runs/000002")
    # SOURCE's run made from it is added with its lineage pointing at it
    assert target.run(4).inputs == {"in": ["2:particles"]}
    assert read_manifest(target.path / "runs/000004/sets/particles").inputs == ["2:particles"]
    assert target.read_steps(4).to_records()[0]["args"]["input"] == "2:particles"
    assert len(target.open_set(4, "particles")) == 4
    # TARGET's other runs untouched; no folder set aside is left behind
    assert {r: tree_digest(target.path / f"runs/{r:06d}") for r in (1, 3)} == keep
    assert not os.listdir(target.path / ".hpcem" / "merge")
    # merging again is nothing to merge; merging back brings SOURCE just TARGET's run 3
    again = merge(target.path, source.path)
    assert again.nothing_to_merge and (2, 2) in again.same
    back = merge(source.path, target.path)
    assert not back.taken_over and [(a.source_id, a.target_id) for a in back.added] == [(3, 4)]


def test_a_run_used_only_by_runs_both_copies_share_is_taken_over(tmp_path):
    target, source = copies(tmp_path, shared_consumer=True)
    continue_run(source, 2, n=5)
    report = merge(target.path, source.path)
    assert [t.target_id for t in report.taken_over] == [2] and (3, 3) in report.same
    assert len(target.open_set(2, "particles")) == 5


def test_a_target_run_using_its_outputs_makes_it_a_conflict(tmp_path):
    target, source = copies(tmp_path)
    finished_run(target, "classify", ["2:particles"], label="t-classify")  # uses run 2
    continue_run(source, 2, n=6)
    finished_run(source, "refine", ["2:particles"])
    digest = tree_digest(target.path, skip_hpcem=False)
    report = merge(target.path, source.path)
    assert not report.taken_over and report.nothing_to_merge
    [c] = report.conflicts
    assert (c.source_id, c.target_id, c.kind) == (2, 2, "newer_in_source")
    assert "TARGET run(s) [3] use its outputs" in c.differences[0]
    assert report.held_back == [(3, "it uses outputs of run 2, which conflicts")]
    assert tree_digest(target.path, skip_hpcem=False) == digest  # nothing changed


def test_an_active_or_edited_target_run_is_never_replaced(tmp_path):
    # the copy was made while run 2 ran: TARGET's run 2 still runs, SOURCE's was ended
    # and run again
    base = Project.create(tmp_path / "base")
    finished_run(base, "import")
    r = base.create_run("extract", params={"n": 4}, inputs={"in": ["1:particles"]})
    base.begin_attempt(r.id, ("saved",))
    base.transition(r.id, ("launched",), "running", attempt=1)
    shutil.copytree(base.path, tmp_path / "tgt", symlinks=True)
    shutil.copytree(base.path, tmp_path / "src", symlinks=True)
    target, source = Project.open(tmp_path / "tgt"), Project.open(tmp_path / "src")
    source.controller_commit(2, 1, state="failed")
    continue_run(source, 2, n=3)
    report = merge(target.path, source.path, dry_run=True)
    assert [c.kind for c in report.conflicts] == ["newer_in_source"]
    assert (
        "running in TARGET: an active run is never replaced" in report.conflicts[0].differences[0]
    )
    # ended in TARGET but its params edited there: which side changed them is unknown
    target.controller_commit(2, 1, state="failed")
    target._mutate(2, lambda rec: dataclasses.replace(rec, params={"n": 9}))
    report = merge(target.path, source.path)
    assert not report.taken_over and "params or inputs differ" in report.conflicts[0].differences[0]
    assert target.run(2).params == {"n": 9} and len(target.run(2).attempts) == 1


def test_dry_run_and_command_line_say_would_take_over(continued):
    from click.testing import CliRunner

    from hpcem.cli.commands_merge import merge_cmd

    target, source = continued
    digest = tree_digest(target.path, skip_hpcem=False)
    runner = CliRunner()
    dry = runner.invoke(merge_cmd, [str(target.path), str(source.path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would take over run 2 (TARGET run 2): extract 'extract'" in dry.output
    as_json = runner.invoke(merge_cmd, [str(target.path), str(source.path), "--dry-run", "--json"])
    taken = json.loads(as_json.output)["taken_over"]
    assert [(t["source_id"], t["target_id"]) for t in taken] == [(2, 2)]
    assert tree_digest(target.path, skip_hpcem=False) == digest
    done = runner.invoke(merge_cmd, [str(target.path), str(source.path)])
    assert done.exit_code == 0 and "took over run 2" in done.output
    assert len(target.run(2).attempts) == 2


def _merge_killed_at_rename(target, source, k):
    """Dies (SIGKILL) right after the ``k``-th folder rename of the commit."""
    count = [0]

    def rename_and_maybe_die(a, b):
        os.rename(a, b)
        count[0] += 1
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    merge_mod._rename = rename_and_maybe_die
    merge(target, source)


def _merge_killed_after_commit(target, source):
    commit = merge_mod._commit

    def commit_and_die(*args):
        commit(*args)
        os.kill(os.getpid(), signal.SIGKILL)  # before the staging folder is removed

    merge_mod._commit = commit_and_die
    merge(target, source)


def _killed(func, *args) -> None:
    child = MP.Process(target=func, args=args)
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL


# renames: 1 TARGET's run 2 set aside, 2 SOURCE's run 2 in place, 3 the new run 4 in place
@pytest.mark.parametrize("k", [1, 2, 3])
def test_sigkill_between_renames_is_undone_and_merge_finishes(continued, k):
    target, source = continued
    digest = tree_digest(target.path)
    _killed(_merge_killed_at_rename, target.path, source.path, k)
    assert tree_digest(target.path)["./project.h5"] == digest["./project.h5"]  # not committed
    out = target.path / "runs/000002"
    if k == 1:  # TARGET's run 2 set aside, SOURCE's not yet in place
        assert not out.exists()
    else:  # SOURCE's run 2 in place, listed with TARGET's record
        assert tree_digest(out) == tree_digest(source.path / "runs/000002")
        assert len(target.run(2).attempts) == 1
    assert (target.path / "runs/000004").exists() == (k == 3)
    if k == 3:  # create_run meets the new folder at its id: every rename is undone
        assert target.create_run("new").id == 4
        after = tree_digest(target.path)
        del after["./project.h5"]
        assert after == {n: v for n, v in digest.items() if n != "./project.h5"}
        merge_mod.recover(target)
        return
    assert merge_mod.recover(target)  # the staging folder is removed
    assert tree_digest(target.path) == digest
    assert not os.listdir(target.path / ".hpcem" / "merge")
    report = merge(target.path, source.path)  # and the merge can be run again
    assert [t.target_id for t in report.taken_over] == [2] and report.renumbered == {3: 4}
    assert tree_digest(target.path / "runs/000002") == tree_digest(source.path / "runs/000002")


def test_sigkill_after_the_index_commit_keeps_the_merge(continued):
    target, source = continued
    _killed(_merge_killed_after_commit, target.path, source.path)
    [stage] = os.listdir(target.path / ".hpcem" / "merge")
    assert os.path.isdir(target.path / ".hpcem" / "merge" / stage / "old-000002")
    merged = tree_digest(target.path)
    assert merged["runs/000002"] == "dir" and merged["runs/000004"] == "dir"
    assert target.create_run("new").id == 5  # nothing moved back
    del merged["./project.h5"]
    # the next merge (nothing to merge) removes TARGET's old run 2 with the staging folder
    assert merge(target.path, source.path).nothing_to_merge
    after = tree_digest(target.path)
    del after["./project.h5"]
    assert after == merged and not os.listdir(target.path / ".hpcem" / "merge")
    assert tree_digest(target.path / "runs/000002") == tree_digest(source.path / "runs/000002")
    assert len(target.open_set(2, "particles")) == 6


def runs_state(project_path) -> dict:
    """``tree_digest`` of ``runs/``, with each set manifest as what it says (run id,
    lineage, files table) rather than its bytes: a rewritten manifest records when it
    was written, so two merges write different bytes."""
    out = tree_digest(project_path / "runs")
    for name in out:
        if name.endswith("manifest.h5"):
            m = read_manifest(project_path / "runs" / os.path.dirname(name))
            out[name] = (m.run_id, list(m.inputs), list(m.files))
    return out


def _merge_child(target, source, started):
    from hpcem.store.project import Project  # imported before the clock starts

    Project.open(target)
    started.set()
    merge(target, source)


@pytest.mark.slow
def test_sigkill_at_random_moments_of_a_takeover(continued, tmp_path):
    target, source = continued
    pristine = tmp_path / "pristine"
    shutil.copytree(target.path, pristine, symlinks=True)
    digest = tree_digest(pristine)
    index = (pristine / "project.h5").read_bytes()
    t0 = time.monotonic()
    merge(target.path, source.path)
    duration = time.monotonic() - t0
    merged = runs_state(target.path)
    rng = np.random.default_rng(17)
    outcomes = []  # the deterministic tests above kill at each rename
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
        merge_mod.recover(t)
        before = (target.path / "project.h5").read_bytes() == index
        outcomes.append("before" if before else "after")
        if before:
            assert tree_digest(target.path) == digest  # wholly before
        else:  # wholly after
            assert runs_state(target.path) == merged
            assert len(t.run(2).attempts) == 2 and len(t.open_set(2, "particles")) == 6
        merge(target.path, source.path)  # either way the merge can be run (again)
        assert runs_state(target.path) == merged
        assert merge(target.path, source.path).nothing_to_merge
    assert len(outcomes) == 12  # both outcomes are usually seen; the timing decides


@pytest.mark.slow
def test_real_ctf_run_launched_only_in_source_is_taken_over(tmp_path):
    """Real runs: a CTF run created before the copy (never launched) is run in SOURCE
    only; TARGET simulated another dataset meanwhile. The CTF run is taken over, its
    fits are SOURCE's, and it runs again in TARGET to the same defocus values."""
    from hpcem.execution import runs as lifecycle

    def simulate(p: Project, seed: int) -> int:
        params = {"kind": "micrographs", "n_items": 1, "size_px": 256, "pixel_size_A": 2.0}
        run = lifecycle.create_run(p, "sim.dataset", {**params, "seed": seed})
        lifecycle.launch(p, run.id, foreground=True)
        assert p.run(run.id).state == "finished", p.run(run.id).error
        return run.id

    base = Project.create(tmp_path / "base")
    simulate(base, 5)
    ctf = lifecycle.create_run(base, "ctf.estimate", {}, inputs={"micrographs": ["1:micrographs"]})
    shutil.copytree(base.path, tmp_path / "tgt", symlinks=True)
    shutil.copytree(base.path, tmp_path / "src", symlinks=True)
    target, source = Project.open(tmp_path / "tgt"), Project.open(tmp_path / "src")
    simulate(target, 6)
    lifecycle.launch(source, ctf.id, foreground=True)
    assert source.run(ctf.id).state == "finished", source.run(ctf.id).error

    report = merge(target.path, source.path)
    assert [(t.source_id, t.target_id) for t in report.taken_over] == [(2, 2)]
    assert not report.added and not report.conflicts
    assert target.run(2).state == "finished" and target.run(2) == source.run(2)
    fits = target.open_set(2, "ctfs")
    theirs = source.open_set(2, "ctfs").columns["defocus_u"]
    np.testing.assert_array_equal(fits.columns["defocus_u"], theirs)
    assert target.open_set(3, "micrographs")  # TARGET's own run kept
    lifecycle.restart_run(target, 2, foreground=True)
    again = target.run(2)
    assert again.state == "finished", again.error
    np.testing.assert_allclose(target.open_set(2, "ctfs").columns["defocus_u"], theirs, rtol=1e-6)
