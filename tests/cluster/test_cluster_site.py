"""Site configs: every shipped site loads; each kind of bad config gets one clear message."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from hpcem.cluster.job import JobSpec
from hpcem.cluster.site import (
    format_walltime,
    list_sites,
    load_site,
    parse_walltime,
    resolve_parsl_address,
    usable_cores,
    worker_command,
)
from hpcem.cluster.templates import render_job_script
from hpcem.errors import ConfigError, ValidationError

SHIPPED = {
    "localhost",
    "local-slurm",
    "local-slurm-netns",
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
        ConfigError, match="queues.debug.cores_per_node: expected a number of cores or 'auto'"
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


# ----------------------------------------------------------------------------- [parsl]
PARSL = GOOD + textwrap.dedent("""
    [parsl]
    address = "ib0"
    port_range = [50100, 50200]
    worker_command = ["/opt/venv/bin/python", "-P", "-m", "parsl.executors.high_throughput.process_worker_pool"]
""")  # noqa: E501 - one TOML line, which a test below replaces whole


def test_parsl_table_is_read(tmp_path):
    site = load_site(str(write_site(tmp_path, PARSL)))
    assert site.parsl.address == "ib0" and site.parsl.address_kind == "interface"
    assert site.parsl.port_range == (50100, 50200)
    assert worker_command(site)[0] == "/opt/venv/bin/python"


def test_parsl_defaults_are_loopback_and_the_site_python(tmp_path):
    site = load_site(str(write_site(tmp_path, GOOD)))
    assert site.parsl.address == "127.0.0.1" and site.parsl.address_kind == "ip"
    assert site.parsl.port_range == (54000, 55000)
    assert worker_command(site) == [
        "python3",
        "-P",
        "-m",
        "parsl.executors.high_throughput.process_worker_pool",
    ]
    here = load_site(
        str(write_site(tmp_path, PARSL.replace("/opt/venv/bin/python", "{controller_python}")))
    )
    assert worker_command(here)[0] == sys.executable
    assert worker_command(here, "/x/python")[0] == "/x/python"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'address = "ib0"',
            'address = "0.0.0.0"',
            "parsl.address: '0.0.0.0' would listen on every interface",
        ),
        (
            'address = "ib0"',
            'address = "*"',
            "parsl.address: '\\*' would listen on every interface",
        ),
        (
            'address = "ib0"',
            'address = "eth 0"',
            "parsl.address: 'eth 0' is neither an IP address, an interface name",
        ),
        ('address = "ib0"', "address = 5", "parsl.address: expected str, got 5"),
        (
            'address = "ib0"',
            'adress = "ib0"',
            "parsl: unknown key 'adress' \\(did you mean 'address'\\?\\)",
        ),
        (
            "[50100, 50200]",
            "[80, 90]",
            (
                "parsl.port_range: ports must satisfy 1024 <= lowest < highest <= 65535, "
                "got \\[80, 90\\]"
            ),
        ),
        ("[50100, 50200]", "[50200, 50100]", "1024 <= lowest < highest"),
        (
            "[50100, 50200]",
            "[50100]",
            "parsl.port_range: expected \\[lowest, highest\\] port numbers, got \\[50100\\]",
        ),
        ("[50100, 50200]", '["a", "b"]', "parsl.port_range: expected \\[lowest, highest\\]"),
        ("worker_command = [", "worker_command = [] #", "parsl.worker_command: empty"),
        (
            '"/opt/venv/bin/python"',
            '"{pyhton}"',
            "unknown placeholder \\{pyhton\\} in '\\{pyhton\\}' \\(did you mean 'python'\\?\\)",
        ),
        (
            '"/opt/venv/bin/python"',
            '"{python"',
            "parsl.worker_command: unbalanced brace in '\\{python'",
        ),
    ],
)
def test_bad_parsl_table(tmp_path, old, new, message):
    assert old in PARSL
    path = write_site(tmp_path, PARSL.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as err:
        load_site(str(path))
    assert str(err.value).startswith(str(path))


def test_cores_per_node_auto_is_this_machines_cores_and_only_for_local(tmp_path):
    local = GOOD.replace('"slurm"', '"local"').replace(
        "cores_per_node = 4", 'cores_per_node = "auto"'
    )
    site = load_site(str(write_site(tmp_path, local)))
    assert site.queues["debug"].cores_per_node == usable_cores() == len(os.sched_getaffinity(0))
    with pytest.raises(
        ConfigError,
        match="cores_per_node: 'auto' \\(this machine's cores\\) only fits scheduler 'local'",
    ):
        load_site(
            str(write_site(tmp_path, GOOD.replace("cores_per_node = 4", 'cores_per_node = "auto"')))
        )
    with pytest.raises(ConfigError, match="expected a number of cores or 'auto', got 'many'"):
        load_site(
            str(write_site(tmp_path, GOOD.replace("cores_per_node = 4", 'cores_per_node = "many"')))
        )


def test_shipped_test_sites_keep_loopback_and_localhost_has_no_fixed_cores():
    for name in ("localhost", "local-slurm", "local-sge"):
        assert load_site(name).parsl.address == "127.0.0.1", name
    assert load_site("localhost").queue().cores_per_node == usable_cores()
    assert 'cores_per_node = "auto"' in Path(load_site("localhost").path).read_text()
    assert load_site("local-slurm-netns").parsl.address == "10.213.0.1"


def test_resolve_parsl_address_by_interface_and_auto(tmp_path):
    import psutil

    lo = load_site(str(write_site(tmp_path, PARSL.replace('"ib0"', '"lo"'))))
    assert resolve_parsl_address(lo) == "127.0.0.1"
    missing = load_site(str(write_site(tmp_path, PARSL.replace('"ib0"', '"nosuchif0"'))))
    with pytest.raises(
        ConfigError, match="parsl.address: no interface 'nosuchif0' on this host.*interfaces: .*lo"
    ):
        resolve_parsl_address(missing)
    auto = load_site(str(write_site(tmp_path, PARSL.replace('"ib0"', '"auto"'))))
    mine = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    try:
        address = resolve_parsl_address(auto)
    except ConfigError as exc:  # a machine with loopback only
        assert "'auto' found no up, non-loopback IPv4 interface" in str(exc)
    else:
        assert address in mine and not address.startswith("127.")
