"""Site configs: every shipped site loads; each kind of bad config gets one clear message."""

from __future__ import annotations

import textwrap

import pytest

from hpcem.cluster.job import JobSpec
from hpcem.cluster.site import format_walltime, list_sites, load_site, parse_walltime
from hpcem.cluster.templates import render_job_script
from hpcem.errors import ConfigError, ValidationError

SHIPPED = {
    "localhost",
    "local-slurm",
    "local-sge",
    "example-slurm-gpu",
    "example-pbs",
    "example-sge",
}

GOOD = textwrap.dedent("""
    [site]
    name = "mysite"
    scheduler = "slurm"
    default_queue = "debug"
    [defaults]
    walltime = "01:00:00"
    [queues.debug]
    max_nodes = 2
    cores_per_node = 4
    max_walltime = "02:00:00"
""")


def write_site(tmp_path, text, name="mysite"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_every_shipped_site_loads():
    names = {name for name, _ in list_sites()}
    assert SHIPPED <= names
    for name in SHIPPED:
        site = load_site(name)
        assert site.name == name
        assert site.default_queue in site.queues


def test_site_search_path_env_shadows_shipped(tmp_path, monkeypatch):
    write_site(tmp_path, GOOD.replace('"mysite"', '"localhost"'), name="localhost")
    monkeypatch.setenv("HPCEM_SITE_PATH", str(tmp_path))
    assert load_site("localhost").scheduler == "slurm"
    assert dict(list_sites())["localhost"] == tmp_path / "localhost.toml"


def test_unknown_key_says_did_you_mean(tmp_path):
    path = write_site(tmp_path, GOOD.replace("max_nodes = 2", "maxnodes = 2"))
    with pytest.raises(ConfigError) as err:
        load_site(str(path))
    assert f"{path}: queues.debug: unknown key 'maxnodes' (did you mean 'max_nodes'?)" in str(
        err.value
    )


def test_unknown_section_and_scheduler(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown section \[defualts\] \(did you mean 'defaults'\?\)"
    ):
        load_site(str(write_site(tmp_path, GOOD.replace("[defaults]", "[defualts]"))))
    with pytest.raises(ConfigError, match="unknown scheduler 'slrum'.*did you mean 'slurm'"):
        load_site(str(write_site(tmp_path, GOOD.replace('"slurm"', '"slrum"'))))


def test_missing_default_queue(tmp_path):
    with pytest.raises(ConfigError, match="default_queue: no queue 'debgu'.*did you mean 'debug'"):
        load_site(
            str(
                write_site(
                    tmp_path, GOOD.replace('default_queue = "debug"', 'default_queue = "debgu"')
                )
            )
        )


def test_bad_walltime_and_type(tmp_path):
    with pytest.raises(ConfigError, match="cannot read walltime '1 hour'"):
        load_site(str(write_site(tmp_path, GOOD.replace('"01:00:00"', '"1 hour"'))))
    with pytest.raises(
        ConfigError, match="queues.debug.cores_per_node: expected a non-negative integer"
    ):
        load_site(
            str(write_site(tmp_path, GOOD.replace("cores_per_node = 4", 'cores_per_node = "4"')))
        )


def test_bad_toml_names_file(tmp_path):
    path = write_site(tmp_path, GOOD + "\n[queues.x\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        load_site(str(path))


def test_unknown_site_lists_known():
    with pytest.raises(ConfigError, match="unknown site 'local-slurn'.*did you mean 'local-slurm'"):
        load_site("local-slurn")


def test_walltime_parse_and_format():
    assert parse_walltime("1-00:00:00") == 86400
    assert parse_walltime("30:00") == 1800
    assert parse_walltime(90) == 90
    assert format_walltime(2 * 86400 + 61) == "48:01:01"


def _spec(tmp_path, **kw):
    return JobSpec(
        command=("true",),
        name="t",
        workdir=str(tmp_path),
        exit_code_file=str(tmp_path / "t.exit"),
        **kw,
    )


def test_request_over_queue_limits_is_refused(tmp_path):
    site = load_site("local-slurm")
    with pytest.raises(ValidationError, match="walltime 48:00:00 is over the limit 24:00:00"):
        render_job_script(site, _spec(tmp_path, walltime_s=2 * 86400))
    with pytest.raises(ValidationError) as err:
        render_job_script(site, _spec(tmp_path, nodes=5, cores_per_task=3, gpus=1))
    assert len(err.value.problems) == 3


def test_missing_queue_in_job(tmp_path):
    with pytest.raises(ConfigError, match="has no queue 'lnog' \\(did you mean 'long'\\?\\)"):
        render_job_script(load_site("local-slurm"), _spec(tmp_path, queue="lnog"))
