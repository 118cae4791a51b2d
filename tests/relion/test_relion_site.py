"""The site named for a run (``--site``) is the one whose RELION is checked when the run
is created: a site whose ``relion_bin`` does not exist is refused at validation, before
any step runs, naming the folder."""

import pytest
from relion_helpers import simulate_micrographs, site_file

from hpcem.errors import ValidationError
from hpcem.execution import runs as lifecycle


def test_a_site_given_at_creation_is_checked_at_validation(project, tmp_path, wait_for_run):
    sim_run, _ = simulate_micrographs(project, wait_for_run, n_items=1, size_px=256)
    missing = tmp_path / "no-relion" / "bin"
    site = site_file(tmp_path / "site", {"relion_bin": str(missing)})
    inputs = {"micrographs": [f"{sim_run}:micrographs"]}
    with pytest.raises(ValidationError, match="relion_autopick not found") as info:
        lifecycle.create_run(
            project, "relion.autopick_log", {}, inputs, placement={"site": str(site)}
        )
    assert str(missing) in str(info.value)
    assert not project.runs[1:]  # nothing was created besides the simulation
