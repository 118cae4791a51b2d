"""Parameter values from the API and the command line: booleans, counts, all problems at once."""

from __future__ import annotations

import numpy as np
import pytest

from hpcem.cli.main import main
from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle
from hpcem.protocol import Param
from hpcem.protocol.params import FALSE_WORDS, TRUE_WORDS

WORDS = [(w, True) for w in TRUE_WORDS] + [(w, False) for w in FALSE_WORDS]


@pytest.fixture
def micrographs(project, tmp_path):
    """A project with a finished import of two small noise micrographs: run 1."""
    from hpcem.io import write_mrc

    rng = np.random.default_rng(3)
    for i in range(2):
        write_mrc(tmp_path / f"m{i}.mrc", rng.normal(size=(128, 128)), 1.5)
    imp = lifecycle.create_run(
        project, "import.micrographs", {"files": str(tmp_path / "m*.mrc"), "pixel_size_A": 1.5}
    )
    lifecycle.launch(project, imp.id, foreground=True)
    assert project.run(imp.id).state == "finished", project.run(imp.id).error
    return project


# --- booleans from the API ---------------------------------------------------------------------
@pytest.mark.parametrize(("word", "expected"), WORDS)
def test_bool_words_in_any_case(word, expected):
    p = Param.bool("astigmatism", True)
    for text in (word, word.upper(), word.capitalize(), f" {word} "):
        assert p.convert(text) is expected


def test_bool_from_json_values():
    p = Param.bool("astigmatism", True)
    assert p.convert(False) is False and p.convert(True) is True
    assert p.convert(0) is False and p.convert(1) is True
    assert p.convert(np.bool_(False)) is False


@pytest.mark.parametrize("bad", ["maybe", "", "2", "tru", "none", 2, -1, 0.0, 1.5, []])
def test_bool_garbage_names_the_accepted_words(bad):
    with pytest.raises(ValueError, match=r"true/false, yes/no, on/off, 1/0 \(any case\)"):
        Param.bool("astigmatism", True).convert(bad)


def test_api_string_false_is_false(micrographs):
    run = lifecycle.create_run(
        micrographs, "ctf.estimate", {"astigmatism": "false"}, {"micrographs": "1:micrographs"}
    )
    assert run.params["astigmatism"] is False
    assert micrographs.run(run.id).params["astigmatism"] is False


def test_api_bool_garbage_is_one_validation_error(micrographs):
    with pytest.raises(ValidationError) as err:
        lifecycle.create_run(
            micrographs, "ctf.estimate", {"astigmatism": "maybe"}, {"micrographs": "1:micrographs"}
        )
    assert err.value.problems == [
        (
            "parameter 'astigmatism': expected one of true/false, yes/no, on/off, 1/0 (any case), "
            "got 'maybe'"
        )
    ]


# --- booleans from the command line ------------------------------------------------------------
def _cli_run(project, *options) -> int:
    return main(
        [
            "run",
            str(project.path),
            "ctf.estimate",
            "--input",
            "micrographs=1:micrographs",
            "--save-only",
            *options,
        ]
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--astigmatism", "false"], False),
        (["--astigmatism", "OFF"], False),
        (["--astigmatism=no"], False),
        (["--astigmatism", "0"], False),
        (["--astigmatism", "Yes"], True),
        (["--no-astigmatism"], False),
        (["--astigmatism"], True),  # the flag alone, at the end
        (["--astigmatism", "--res-low-A", "25"], True),  # the flag alone, another option next
        (["--astigmatism", "true", "--no-astigmatism"], False),  # the last one wins
        ([], True),  # the declared default
    ],
)
def test_cli_bool_flag_or_explicit_value(micrographs, capsys, options, expected):
    assert _cli_run(micrographs, *options) == 0, capsys.readouterr().err
    assert micrographs.runs[-1].params["astigmatism"] is expected


def test_cli_bool_garbage_is_one_line_naming_parameter_and_words(micrographs, capsys):
    assert _cli_run(micrographs, "--astigmatism", "maybe") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "parameter 'astigmatism'" in err and "true/false, yes/no, on/off, 1/0" in err
    assert "'maybe'" in err
    assert [r.protocol for r in micrographs.runs] == ["import.micrographs"]  # nothing stored


def test_cli_bool_help_shows_both_forms(capsys):
    assert main(["run", "somewhere", "ctf.estimate", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--astigmatism / --no-astigmatism" in out
    assert "--astigmatism VALUE with VALUE one of true/false, yes/no, on/off, 1/0" in out


def test_copy_takes_an_explicit_bool_value(micrographs, capsys):
    assert _cli_run(micrographs) == 0
    original = micrographs.runs[-1]
    assert main(["copy", str(micrographs.path), str(original.id), "--astigmatism", "off"]) == 0
    assert micrographs.runs[-1].params["astigmatism"] is False


# --- counts of the execution options -----------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--workers", "0"),
        ("--workers", "-2"),
        ("--cores", "0"),
        ("--nodes", "-1"),
        ("--max-blocks", "0"),
    ],
)
def test_cli_counts_below_one_are_one_line_errors(micrographs, capsys, option, value):
    assert _cli_run(micrographs, option, value) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"Invalid value for '{option}': {value} is not in the range x>=1" in err
    assert [r.protocol for r in micrographs.runs] == ["import.micrographs"]


# --- every problem at once ---------------------------------------------------------------------
def test_out_of_range_and_cross_field_problems_together(micrographs):
    with pytest.raises(ValidationError) as err:
        lifecycle.create_run(
            micrographs,
            "ctf.estimate",
            {"defocus_min_A": -5, "res_high_A": 40, "res_low_A": 30},
            {"micrographs": "1:micrographs"},
        )
    problems = err.value.problems
    assert any("'defocus_min_A' = -5 is below the minimum 0" in p for p in problems)
    assert any("res_high_A must be below res_low_A" in p for p in problems)
    assert len(problems) == 2
