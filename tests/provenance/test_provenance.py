"""Provenance records of real runs: versions against importlib.metadata, hashes against
hashlib on the files, times in order, hosts, kernels, seeds, and RELION's own command
lines and the version RELION reports (asked here with its own --version)."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hpcem.errors import RunError
from hpcem.provenance import hashes, provenance
from hpcem.provenance.record import format_text


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _fast(path) -> str:
    """The documented rule, written out again: BLAKE2b-256 of the size (8 bytes, little
    endian), the first MiB and the last MiB (the whole file up to 2 MiB)."""
    with open(path, "rb") as f:
        data = f.read()
    mib = 1 << 20
    body = data if len(data) <= 2 * mib else data[:mib] + data[-mib:]
    h = hashlib.blake2b(len(data).to_bytes(8, "little") + body, digest_size=32)
    return "b2fast:" + h.hexdigest()


# --- the hash rule, on files made here (fast) -------------------------------------------------
@pytest.mark.parametrize("size", [0, 1000, 2 << 20, (5 << 20) + 3])
def test_hashes_follow_the_documented_rule(tmp_path, size):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))
    d = hashes.describe_file(path)
    assert d["size"] == size
    assert d["sha256"] == _sha256(path)
    assert d["fast_hash"] == _fast(path)


def test_fast_hash_sees_the_ends_and_full_hash_is_skipped_above_the_limit(tmp_path):
    path = tmp_path / "big.bin"
    data = bytearray(os.urandom(5 << 20))
    path.write_bytes(data)
    assert hashes.describe_file(path, full_max_bytes=1 << 20)["sha256"] is None
    before = hashes.fast_hash(path)
    data[-1] ^= 1
    path.write_bytes(data)
    assert hashes.fast_hash(path) != before


def test_cache_reads_a_file_once_and_again_after_it_changed(tmp_path):
    path = tmp_path / "a.mrc"
    path.write_bytes(b"x" * 5000)
    cache_file = tmp_path / "proj" / "runs" / "000001" / "provenance" / "hashes.json"
    cache = hashes.HashCache(cache_file)
    first = cache.describe(path)
    cache.save()
    again = hashes.HashCache(cache_file)
    assert again.describe(path) == first and again.computed == 0
    path.write_bytes(b"y" * 6000)
    changed = again.describe(path)
    assert again.computed == 1
    assert changed["sha256"] == _sha256(path) != first["sha256"]
    assert changed["size"] == 6000


# --- records of real runs ---------------------------------------------------------------------
@pytest.mark.slow  # the shared workflow (about 20 s, once per session)
def test_versions_are_those_of_importlib_metadata(workflow):
    from hpcem.protocol.registry import get_protocol

    rec = provenance(workflow["project"], workflow["ctf"].id)
    sw = rec["software"]
    assert sw["hpcem"] == importlib.metadata.version("hpcem")
    assert sw["project_created_with_hpcem"] == importlib.metadata.version("hpcem")
    assert sw["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    for name in ("numpy", "scipy", "h5py", "mrcfile"):
        assert sw["packages"][name] == importlib.metadata.version(name)
    assert rec["protocol"]["name"] == "ctf.estimate"
    assert rec["protocol"]["version"] == get_protocol("ctf.estimate").version
    assert rec["protocol"]["citations"] == ["Rohou2015"]


@pytest.mark.slow
def test_input_and_output_files_with_sizes_and_hashes_of_the_real_files(workflow):
    project = workflow["project"]
    rec = provenance(project, workflow["ctf"].id)
    inputs = rec["files"]["inputs"]
    names = {os.path.basename(e["path"]) for e in inputs}
    assert {"mic_000.mrc", "mic_001.mrc", "manifest.h5"} <= names
    assert {e["set"] for e in inputs} == {f"{workflow['sim'].id}:micrographs"}
    for e in inputs + rec["files"]["outputs"]:
        path = project.path / e["path"]
        assert not os.path.isabs(e["path"])  # inside the project: project-relative
        assert e["size"] == path.stat().st_size
        assert e["sha256"] == _sha256(path)
        assert e["fast_hash"] == _fast(path)
    outputs = {e["path"] for e in rec["files"]["outputs"]}
    assert f"runs/{workflow['ctf'].id:06d}/sets/ctfs/manifest.h5" in outputs
    # the simulated micrographs are outputs of the simulation run
    sim = provenance(project, workflow["sim"].id)
    assert {"mic_000.mrc", "mic_001.mrc"} <= {
        os.path.basename(e["path"]) for e in sim["files"]["outputs"] if e["role"] == "referenced"
    }
    assert sim["files"]["inputs"] == []


@pytest.mark.slow
def test_hashes_are_cached_in_the_run_folder(workflow, monkeypatch):
    project = workflow["project"]
    provenance(project, workflow["dog"].id)
    cache = project.path / "runs" / f"{workflow['dog'].id:06d}" / "provenance" / "hashes.json"
    assert cache.is_file()
    calls = []
    real = hashes.sha256_file
    monkeypatch.setattr(hashes, "sha256_file", lambda p: calls.append(p) or real(p))
    rec = provenance(project, workflow["dog"].id)
    assert calls == []  # every file described from the cache
    assert len(rec["files"]["inputs"]) >= 6  # micrograph and CTF sets, micrographs, pictures


@pytest.mark.slow
def test_times_hosts_steps_and_kernels(workflow):
    from hpcem.kernels import backend

    project = workflow["project"]
    sim = provenance(project, workflow["sim"].id)
    rec = provenance(project, workflow["ctf"].id)
    (a,) = rec["execution"]["attempts"]
    assert a["launched_unix"] <= a["started_unix"] <= a["ended_unix"]
    assert sim["execution"]["attempts"][0]["ended_unix"] <= a["launched_unix"]
    table = project.read_steps(workflow["ctf"].id).to_records()
    assert [s["name"] for s in rec["steps"]] == [s["name"] for s in table]
    assert len(rec["steps"]) == 3  # two micrographs and the register step
    for s in rec["steps"]:
        assert s["state"] == "finished"
        assert a["started_unix"] <= s["started_unix"] <= s["ended_unix"] <= a["ended_unix"]
        assert s["seconds"] == pytest.approx(s["ended_unix"] - s["started_unix"])
    assert rec["execution"]["hosts"] == {socket.gethostname(): 3}
    assert rec["execution"]["sites"] == ["localhost"]
    assert rec["execution"]["job_ids"] == []  # a local run has no batch job
    assert rec["kernel_backends"] == {
        "ctf_periodogram": [backend("ctf_periodogram")],
        "radial": [backend("radial")],
    }
    when = datetime.datetime.fromtimestamp(a["started_unix"], datetime.UTC)
    assert a["started"] == when.strftime("%Y-%m-%dT%H:%M:%S+00:00")


@pytest.mark.slow
def test_seeds_from_the_parameters_and_the_steps(workflow):
    rec = provenance(workflow["project"], workflow["sim"].id)
    assert rec["seeds"]["params"] == {"seed": 7}
    step_seeds = rec["seeds"]["steps"]["seed"]
    assert 7 in step_seeds
    assert len(step_seeds) == 3  # the run's seed and one seed drawn from it per micrograph
    ctf = provenance(workflow["project"], workflow["ctf"].id)
    assert ctf["seeds"] == {"params": {}, "steps": {}}


@pytest.mark.slow
def test_relion_commands_and_the_version_relion_reports(workflow):
    if workflow["log"] is None:
        pytest.skip("RELION is not installed (relion_autopick not on PATH)")
    out = subprocess.run(
        [shutil.which("relion_autopick"), "--version"], check=False, capture_output=True, text=True
    )
    m = re.search(r"RELION version:\s*v?(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    rec = provenance(workflow["project"], workflow["log"].id)
    assert len(rec["commands"]) == 2  # one relion_autopick per micrograph
    for cmd in rec["commands"]:
        assert os.path.basename(cmd["argv"][0]) == "relion_autopick"
        assert "--LoG" in cmd["argv"]
        assert cmd["argv"][cmd["argv"].index("--LoG_diam_min") + 1] in ("100", "100.0")
        assert cmd["returncode"] == 0
    (prog,) = rec["external_programs"]
    assert prog["name"] == "relion_autopick"
    assert prog["version_now"].startswith(m.group(1))
    assert prog["version_at_run"][0].startswith(m.group(1))
    text = format_text(rec)
    assert rec["commands"][0]["command"] in text


@pytest.mark.slow
def test_cli_shows_the_record_and_its_json(workflow):
    from hpcem.cli.commands_provenance import provenance_cmd

    project = workflow["project"]
    runner = CliRunner()
    res = runner.invoke(provenance_cmd, [str(project.path), str(workflow["ctf"].id), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["run"]["id"] == workflow["ctf"].id
    assert doc["files"] == provenance(project, workflow["ctf"].id)["files"]
    res = runner.invoke(provenance_cmd, [str(project.path), "Estimate CTF"])  # by label
    assert res.exit_code == 0, res.output
    assert "ctf.estimate (protocol version" in res.output
    assert "mic_000.mrc" in res.output
    res = runner.invoke(provenance_cmd, [str(project.path), "99"])
    assert isinstance(res.exception, RunError)
    assert runner.invoke(provenance_cmd, ["--help"]).exit_code == 0


def test_a_run_never_launched_has_a_record_without_attempts_or_files(project):
    """A saved run (no attempt, no step, no output) still has a record, and its seed."""
    from hpcem.execution import runs as lifecycle

    run = lifecycle.create_run(project, "sim.dataset", {"kind": "micrographs", "seed": 11})
    rec = provenance(project, run.id)
    assert rec["run"]["state"] == "saved"
    assert rec["execution"]["attempts"] == [] and rec["execution"]["started"] is None
    assert rec["steps"] == [] and rec["commands"] == []
    assert rec["files"] == {"inputs": [], "outputs": []}
    assert rec["seeds"]["params"] == {"seed": 11}
    assert "run 1 'Simulate a dataset': sim.dataset" in format_text(rec)
    json.dumps(rec, allow_nan=False)  # strict JSON: no NaN times


# --- software recorded per attempt -----------------------------------------------------------
def _built_kernels() -> list[str]:
    """Compiled kernels of this installation, from the files (the outside view)."""
    import importlib.machinery
    from pathlib import Path

    import hpcem.kernels

    names = set()
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    for f in Path(hpcem.kernels.__file__).parent.iterdir():
        suffix = next((s for s in suffixes if f.name.endswith(s)), None)
        if suffix:  # the longest: "NAME.cpython-311-x86_64-linux-gnu.so" is NAME
            names.add(f.name[: -len(suffix)])
    return sorted(names)


@pytest.mark.slow
def test_each_attempt_records_the_software_it_was_launched_with(workflow):
    from hpcem.protocol.registry import get_protocol

    rec = provenance(workflow["project"], workflow["ctf"].id)
    (a,) = rec["execution"]["attempts"]
    sw = a["software"]
    assert sw["hpcem"] == importlib.metadata.version("hpcem")
    assert sw["protocol_version"] == get_protocol("ctf.estimate").version
    assert sw["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    for name in ("numpy", "scipy", "h5py", "mrcfile"):
        assert sw["packages"][name] == importlib.metadata.version(name)
    assert sw["kernels_compiled"] == _built_kernels()
    assert sw["host"] == socket.gethostname() == a["launcher_host"]
    assert f"software at launch: hpcem {sw['hpcem']}, protocol version" in format_text(rec)


def test_begin_attempt_records_software_and_old_attempts_still_load(project):
    """A new attempt carries its software in the stored record; an attempt stored before
    the field existed (no "software" key) loads with an empty one and is shown as such."""
    from hpcem.store import record as store_record

    run = project.create_run("ctf.estimate", "x")
    project.begin_attempt(run.id, ("saved",))
    again = type(project).open(project.path).run(run.id)  # read back from the index
    sw = again.attempt.software
    assert sw["hpcem"] == importlib.metadata.version("hpcem")
    assert sw["packages"]["numpy"] == importlib.metadata.version("numpy")
    assert sw["kernels_compiled"] == _built_kernels()
    # the record of an older hpcem: the same JSON without the field
    stored = store_record.to_json(again)
    for a in stored["attempts"]:
        del a["software"]
    old = store_record.parts_from_json(json.loads(json.dumps(stored)))
    assert old["attempts"][0].software == {}
    assert old["attempts"][0].launcher_host == again.attempt.launcher_host
    rec = provenance(project, run.id)
    assert rec["execution"]["attempts"][0]["software"] == sw
    from hpcem.provenance.record import attempt_software_text

    shown = attempt_software_text({})
    assert shown.endswith("not recorded (attempt made before hpcem recorded it)")
