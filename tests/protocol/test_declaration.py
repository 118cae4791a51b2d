"""Declaration -> CLI options -> validation, discovery, step identity."""

from __future__ import annotations

import pytest

from hpcem.cli.main import main
from hpcem.errors import ProtocolError, ValidationError
from hpcem.execution.runs import create_run
from hpcem.protocol import Param, Step, when
from hpcem.protocol.registry import Registry, get_protocol
from hpcem.protocol.validate import convert_params


# --- parameters ------------------------------------------------------------------------------
def test_param_conversions_from_strings():
    assert Param.int("n").convert("12") == 12
    assert Param.float("x").convert("1.5e3") == 1500.0
    assert Param.bool("b").convert("no") is False
    assert Param.bool("b").convert("TRUE") is True
    assert Param.numlist("l").convert("1, 2 3") == [1.0, 2.0, 3.0]
    assert Param.range("r").convert("5000:30000:500") == [5000.0, 30000.0, 500.0]
    for param, bad in [
        (Param.int("n"), "1.5"),
        (Param.float("x"), "nan"),
        (Param.bool("b"), "maybe"),
        (Param.range("r"), "5:1:1"),
        (Param.numlist("l"), "1,a"),
    ]:
        with pytest.raises(ValueError):
            param.convert(bad)


def test_param_ranges_and_choices():
    p = Param.float("pixel_size_A", min=0.1, max=10.0, units="Å/px")
    assert p.check(5.0) == []
    assert "below the minimum 0.1 Å/px" in p.check(0.01)[0]
    assert "above the maximum" in p.check(11.0)[0]
    e = Param.enum("mode", ("fast", "accurate"))
    assert "not one of fast, accurate" in e.check("slow")[0]
    assert Param.int("n", required=True).check(None) == ["parameter 'n' is required"]


def test_conditions_switch_parameters_off():
    form = get_protocol("test.form")
    _, problems = convert_params(form, {"mode": "fast", "iterations": "1000"})
    assert problems == []  # iterations applies only in accurate mode
    _, problems = convert_params(form, {"mode": "accurate", "iterations": "1000"})
    assert problems == ["parameter 'iterations' = 1000 is above the maximum 100"]
    assert when("mode", "==", "accurate").holds({"mode": "accurate"})


# --- validation: all problems together ------------------------------------------------------
def test_validation_reports_every_problem_at_once(project):
    with pytest.raises(ValidationError) as err:
        create_run(
            project,
            "test.form",
            {"box_size": "17", "threshold": "2", "mode": "slow", "thresold": 1},
        )
    problems = err.value.problems
    assert any("unknown parameter 'thresold' (did you mean 'threshold'?)" in p for p in problems)
    assert any("'threshold' = 2 is above the maximum 1" in p for p in problems)
    assert any("'mode' = 'slow' is not one of fast, accurate" in p for p in problems)
    assert any("box size must be even, got 17" in p for p in problems)  # the protocol's own
    assert len(problems) == 4
    assert project.runs == []  # nothing stored


def test_protocol_own_check(project):
    with pytest.raises(ValidationError, match="box size must be even, got 17"):
        create_run(project, "test.form", {"box_size": 17})
    run = create_run(project, "test.form", {"box_size": 16, "angles": "10,20"})
    assert run.state == "saved"
    assert run.params["angles"] == [10.0, 20.0]
    assert run.params["defocus_range"] == [5000.0, 30000.0, 500.0]


def test_unknown_protocol_suggests_close_name():
    with pytest.raises(ProtocolError, match="did you mean 'ctf.estimate'"):
        get_protocol("ctf.estimat")


# --- steps ------------------------------------------------------------------------------------
def test_step_identity_is_stable_and_args_must_be_json():
    a = Step("x", "m:f", {"b": 1, "a": [1, 2]})
    b = Step("y", "m:f", {"a": [1, 2], "b": 1})
    assert a.id == b.id  # name and key order do not matter
    assert Step("x", "m:f", {"a": [1, 2], "b": 2}).id != a.id
    assert Step("x", "m:g", {"a": [1, 2], "b": 1}).id != a.id
    with pytest.raises(ProtocolError, match="JSON-serialisable"):
        Step("x", "m:f", {"obj": object()})
    with pytest.raises(ProtocolError, match="JSON-serialisable"):
        Step("x", "m:f", {"v": float("nan")})


def test_step_graph_rejects_cycles_and_unknown_deps():
    from hpcem.execution.graph import StepGraph

    with pytest.raises(ProtocolError, match="cycle"):
        StepGraph(
            [Step("a", "m:f", {"i": 1}, deps=("b",)), Step("b", "m:f", {"i": 2}, deps=("a",))]
        )
    with pytest.raises(ProtocolError, match="unknown step 'z'"):
        StepGraph([Step("a", "m:f", deps=("z",))])
    g = StepGraph(
        [
            Step("c", "m:f", {"i": 3}, deps=("a", "b")),
            Step("a", "m:f", {"i": 1}),
            Step("b", "m:f", {"i": 2}, deps=("a",)),
        ]
    )
    assert g.order == ["a", "b", "c"]
    assert g.ready(set(), []) == ["a"]
    assert g.ready({"a"}, []) == ["b"]


# --- discovery ----------------------------------------------------------------------------------
def test_plugin_discovery_through_entry_point_and_broken_plugin_reported():
    reg = Registry().load()
    assert "test.dag" in reg.protocols and "test.form" in reg.protocols
    assert "plugin testplugin" in reg.sources["test.dag"]
    assert "import.micrographs" in reg.protocols and reg.sources["import.micrographs"] == "builtin"
    assert "broken" in reg.errors
    assert "this plugin is broken on purpose" in reg.errors["broken"]


# --- the command line derived from the declaration ----------------------------------------------
def test_protocol_help_lists_declared_options(capsys):
    assert main(["run", "somewhere", "test.form", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in (
        "--box-size",
        "--threshold",
        "--invert / --no-invert",
        "--mode",
        "--angles",
        "--defocus-range",
        "--input",
        "--wait",
        "--queue",
    ):
        assert option in out
    assert "[16, 1024] px" in out and "applies when mode == 'accurate'" in out


def test_protocols_command_table_and_form(capsys):
    assert main(["protocols"]) == 0
    captured = capsys.readouterr()
    assert "ctf.estimate" in captured.out and "Rohou and Grigorieff (2015)" in captured.out
    assert "test.form" in captured.out and "Tester et al. (2026)" in captured.out
    assert "protocol plugin broken not loaded" in captured.err
    assert main(["protocols", "import.micrographs"]) == 0
    out = capsys.readouterr().out
    assert "--pixel-size-A" in out and "(required)" in out and "hpcem.SetOfMicrographs" in out


def test_cli_run_bad_parameter_is_one_line(project, capsys):
    code = main(["run", str(project.path), "test.form", "--box-size", "17", "--threshold", "x"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert "parameter 'threshold': expected a number, got 'x'" in err
    code = main(["run", str(project.path), "test.fom"])
    assert code == 2
    assert "unknown protocol 'test.fom' (did you mean 'test.form'?)" in capsys.readouterr().err
    code = main(["run", str(project.path), "test.form", "--bxo-size", "3"])
    assert code == 2
    assert (
        "No such option '--bxo-size'. (Did you mean one of: '--box-size'" in capsys.readouterr().err
    )
    assert project.runs == []
