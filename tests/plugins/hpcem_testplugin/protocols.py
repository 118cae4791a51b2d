"""Test protocols: a 3-level DAG, sleepy independent steps, failures, trivial steps."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hpcem.protocol import Citation, Input, Output, Param, Protocol, Step, when

CITE = Citation(
    "test2026",
    "@misc{test2026, author = {Tester, Ada and Other, Bob and Third, C}, "
    "title = {Testing}, year = {2026}}",
)


def record(out_dir: str, name: str, sleep_s: float = 0.0, fail: bool = False) -> dict:
    """Append a start/end record for ``name`` to ``out_dir/name.jsonl``; optionally fail."""
    start = time.time()
    if sleep_s:
        time.sleep(sleep_s)
    if fail:
        raise RuntimeError(f"step {name} failed on purpose")
    end = time.time()
    with open(Path(out_dir) / f"{name}.jsonl", "a") as fh:
        fh.write(json.dumps({"start": start, "end": end, "pid": os.getpid()}) + "\n")
    return {"name": name, "start": start, "end": end, "pid": os.getpid()}


def trivial(i: int) -> int:
    return i


def summarize(ctx) -> dict:
    results = ctx.results("")
    return {"n": len(results)}


class Dag(Protocol):
    name = "test.dag"
    label = "Three-level DAG"
    help = "a -> (b1, b2) -> c; b1 and b2 run in parallel."
    params = (Param.path("out_dir", required=True), Param.float("sleep_s", 0.5, min=0.0))
    citations = (CITE,)

    def steps(self, ctx):
        p = ctx.params
        a = Step("a", f"{__name__}:record", {"out_dir": p["out_dir"], "name": "a"})
        b1 = Step(
            "b1",
            f"{__name__}:record",
            {"out_dir": p["out_dir"], "name": "b1", "sleep_s": p["sleep_s"]},
            deps=("a",),
        )
        b2 = Step(
            "b2",
            f"{__name__}:record",
            {"out_dir": p["out_dir"], "name": "b2", "sleep_s": p["sleep_s"]},
            deps=("a",),
        )
        c = Step(
            "c", f"{__name__}:record", {"out_dir": p["out_dir"], "name": "c"}, deps=("b1", "b2")
        )
        return [c, b2, a, b1]  # any order: the graph orders them


class Sleepy(Protocol):
    name = "test.sleepy"
    label = "Independent sleepy steps"
    params = (
        Param.path("out_dir", required=True),
        Param.int("n", 6, min=1, max=10000),
        Param.float("sleep_s", 1.0, min=0.0, max=600.0),
        Param.int("fail_index", -1, help="index of a step that fails (-1 = none)"),
    )

    def steps(self, ctx):
        p = ctx.params
        return [
            Step(
                f"s/{i:04d}",
                f"{__name__}:record",
                {
                    "out_dir": p["out_dir"],
                    "name": f"s{i:04d}",
                    "sleep_s": p["sleep_s"],
                    "fail": i == p["fail_index"],
                },
            )
            for i in range(p["n"])
        ]


class Trivial(Protocol):
    name = "test.trivial"
    label = "Trivial steps (dispatch benchmark)"
    params = (Param.int("n", 1000, min=1, max=1000000),)

    def steps(self, ctx):
        steps = [
            Step(f"t/{i:06d}", f"{__name__}:trivial", {"i": i}) for i in range(ctx.params["n"])
        ]
        return steps


class Form(Protocol):
    """Every parameter kind, conditions and a protocol-level check."""

    name = "test.form"
    label = "Form with every parameter kind"
    inputs = (Input("micrographs", ("hpcem.SetOfMicrographs",), required=False),)
    params = (
        Param.int("box_size", 64, min=16, max=1024, units="px", help="Box size (even)."),
        Param.float("threshold", 0.5, min=0.0, max=1.0),
        Param.bool("invert", False),
        Param.enum("mode", ("fast", "accurate"), "fast"),
        Param.int("iterations", 10, min=1, max=100, when=(when("mode", "==", "accurate"),)),
        Param.string("comment", ""),
        Param.path("reference", None),
        Param.numlist("angles", [0.0, 90.0], min=0.0, max=360.0),
        Param.range("defocus_range", [5000.0, 30000.0, 500.0], min=0.0),
    )
    outputs = (Output("report", "hpcem.SetOfMicrographs"),)
    citations = (CITE,)

    def validate(self, ctx):
        if ctx.params["box_size"] % 2:
            return [f"box size must be even, got {ctx.params['box_size']}"]
        return []

    def steps(self, ctx):
        return [Step("only", f"{__name__}:trivial", {"i": 1})]


def leak(out_dir: str, sleep_s: float) -> dict:
    """Start a process that escapes the run's process group (a daemon a program left)."""
    import subprocess

    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    Path(out_dir, "leaked.pid").write_text(str(proc.pid))
    time.sleep(sleep_s)
    return {"leaked": proc.pid}


def not_storable(i: int) -> dict:
    return {"i": i, "value": float("nan")}


def write_then_maybe_fail(ctx, rows: int, fail_after: int) -> dict:
    """Controller step: write ``rows`` particles, raising after ``fail_after`` (-1: never)."""
    with ctx.create_set("particles", "hpcem.SetOfParticles") as writer:
        for i in range(rows):
            if i == fail_after:
                raise RuntimeError(f"failed while writing row {i} on purpose")
            writer.append_columns({"defocus_u": [float(i)]})
    return {"rows": rows}


class Faults(Protocol):
    """Steps that misbehave in the ways the fault tests need."""

    name = "test.faults"
    label = "Fault injection"
    params = (
        Param.path("out_dir", required=True),
        Param.enum("mode", ("leak", "not_storable", "write", "plan"), "leak"),
        Param.int("n", 2, min=1, max=100),
        Param.float("sleep_s", 0.1, min=0.0, max=600.0),
        Param.int("fail_after", -1, help="write mode: fail after this many rows (-1 = never)"),
    )
    outputs = (Output("particles", "hpcem.SetOfParticles"),)

    def steps(self, ctx):
        p = ctx.params
        if p["mode"] == "plan" and Path(p["out_dir"], "break-plan").exists():
            raise KeyError("defocus_u")  # bad data found while planning: not an HpcemError
        if p["mode"] == "leak":
            return [
                Step("leak", f"{__name__}:leak", {"out_dir": p["out_dir"], "sleep_s": p["sleep_s"]})
            ]
        if p["mode"] == "not_storable":
            return [
                Step(
                    f"n/{i}",
                    f"{__name__}:not_storable" if i == 0 else f"{__name__}:trivial",
                    {"i": i},
                )
                for i in range(p["n"])
            ]
        if p["mode"] == "write":
            return [
                Step(
                    "write",
                    f"{__name__}:write_then_maybe_fail",
                    {"rows": p["n"], "fail_after": p["fail_after"]},
                    controller=True,
                )
            ]
        return [Step("only", f"{__name__}:trivial", {"i": 1})]
