"""The methods paragraph and BibTeX of real runs: protocols named, the non-default
parameters with their units (and no default one), versions, and exactly the cited keys."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from hpcem.errors import RunError
from hpcem.provenance import bibtex, methods_text
from hpcem.provenance.methods import format_value


def _sentence(text: str, run_id: int) -> str:
    """The sentence of run ``run_id``."""
    m = re.search(rf"Run {run_id}\b.*?\.(?= Run \d| Processing used)", text, re.DOTALL)
    assert m, text
    return m.group(0)


def _bib_keys(bib: str) -> list[str]:
    return re.findall(r"@\w+\{([^,\s]+),", bib)


@pytest.mark.slow  # the shared workflow of conftest.py
def test_names_protocols_non_default_parameters_with_units(workflow):
    from hpcem.protocol.registry import get_protocol

    text = methods_text(workflow["project"])
    for run, protocol in ((workflow["sim"], "sim.dataset"), (workflow["ctf"], "ctf.estimate")):
        version = get_protocol(protocol).version
        assert f"`{protocol}` (protocol version {version})" in _sentence(text, run.id)
    sim = _sentence(text, workflow["sim"].id)
    assert "size_px = 512 px" in sim
    assert "n_items = 2" in sim and "seed = 7" in sim and "snr = 0.5" in sim
    assert "pixel_size_A" not in sim  # 1.0 Å/px is the default
    assert "n_frames" not in sim  # a movie parameter: does not apply to micrographs
    ctf = _sentence(text, workflow["ctf"].id)
    assert "min_fit_score = 0.4" in ctf
    assert "res_low_A = 25 Å" in ctf
    assert "defocus_min_A" not in ctf and "tile_size_px" not in ctf  # defaults
    assert f"the micrographs of run {workflow['sim'].id}" in ctf
    dog = _sentence(text, workflow["dog"].id)
    assert "`picking.dog`" in dog and "diameter_A = 131.3 Å" in dog
    assert "threshold =" not in dog and "exclusion_sd =" not in dog
    assert "Processing used hpcem" in text


@pytest.mark.slow  # the shared workflow of conftest.py
def test_cited_keys_are_exactly_the_bibtex_keys_each_once(workflow):
    from hpcem.protocol.registry import get_protocol

    project = workflow["project"]
    text = methods_text(project)
    bib = bibtex(project)
    keys = _bib_keys(bib)
    assert len(keys) == len(set(keys))
    cited = set(re.findall(r"@([A-Za-z0-9_:-]+)", text))
    assert cited == set(keys)
    declared = {
        c.key
        for name in ("sim.dataset", "ctf.estimate", "picking.dog")
        for c in get_protocol(name).citations
    }
    assert declared <= set(keys)
    assert {"Rohou2015", "Voss2009", "hpcem"} <= set(keys)
    for entry in re.split(r"\n\n", bib.strip()):
        assert entry.count("{") == entry.count("}")  # each entry is balanced


@pytest.mark.slow  # the shared workflow of conftest.py
def test_only_the_runs_named(workflow):
    project = workflow["project"]
    ctf = workflow["ctf"].id
    text = methods_text(project, [ctf])
    assert "`ctf.estimate`" in text and "`picking.dog`" not in text
    assert "Voss2009" not in bibtex(project, [ctf])
    with pytest.raises(RunError):
        methods_text(project, [99])


@pytest.mark.slow  # the shared workflow of conftest.py
def test_relion_version_in_the_text(workflow):
    if workflow["log"] is None:
        pytest.skip("RELION is not installed (relion_autopick not on PATH)")
    out = subprocess.run(
        [shutil.which("relion_autopick"), "--version"], check=False, capture_output=True, text=True
    )
    version = re.search(r"RELION version:\s*v?(\d+\.\d+\.\d+)", out.stdout + out.stderr).group(1)
    text = methods_text(workflow["project"])
    assert f"relion_autopick {version}" in _sentence(text, workflow["log"].id)
    assert f"RELION {version}" in text


@pytest.mark.slow  # the shared workflow of conftest.py
def test_cli_writes_the_text_and_the_bibtex(workflow, tmp_path):
    from hpcem.cli.commands_provenance import methods_cmd

    project = workflow["project"]
    out, bib = tmp_path / "methods.md", tmp_path / "refs.bib"
    res = CliRunner().invoke(
        methods_cmd,
        [str(project.path), str(workflow["ctf"].id), "-o", str(out), "--bib", str(bib)],
    )
    assert res.exit_code == 0, res.output
    assert out.read_text() == methods_text(project, [workflow["ctf"].id])
    assert bib.read_text() == bibtex(project, [workflow["ctf"].id])


@pytest.mark.parametrize(
    ("value", "units", "text"),
    [
        (25.0, "Å", "25 Å"),
        (0.1234567, "", "0.123457"),
        (True, "", "yes"),
        ([1.0, 2.5], "", "1, 2.5"),
    ],
)
def test_format_value(value, units, text):
    assert format_value(value, units) == text
