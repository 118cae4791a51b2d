"""``hpcem site ...`` and ``hpcem queue`` without a scheduler: one clear line per error."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hpcem.cli.main import main
from hpcem.cluster.job import JobSpec
from hpcem.cluster.site import load_site
from hpcem.cluster.submit import submit_job
from hpcem.errors import ConfigError


@pytest.mark.parametrize(
    "argv", [["site"], ["site", "list"], ["site", "check"], ["site", "render"], ["queue"]]
)
def test_every_command_has_help(argv, capsys):
    assert main([*argv, "--help"]) == 0
    assert len(capsys.readouterr().out) > 80


def test_site_list(capsys):
    assert main(["site", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("localhost", "local-slurm", "local-sge", "example-pbs"):
        assert name in out


def test_render_prints_script_with_quoted_label(capsys, tmp_path):
    assert (
        main(
            [
                "site",
                "render",
                "local-slurm",
                "--queue",
                "long",
                "--nodes",
                "2",
                "--walltime",
                "2-00:00:00",
                "--label",
                "; rm -rf ~",
                "--workdir",
                str(tmp_path),
                "--",
                "python",
                "-c",
                "print(1)",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "#SBATCH --partition=long" in out and "#SBATCH --time=48:00:00" in out
    assert "export HPCEM_LABEL='; rm -rf ~'" in out
    assert "python -c 'print(1)' &" in out


def test_render_over_limit_is_one_line(capsys):
    assert main(["site", "render", "local-slurm", "--walltime", "2-00:00:00"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == (
        "hpcem: error: walltime 48:00:00 is over the limit 24:00:00 of site "
        "'local-slurm' queue 'debug'"
    )


def test_render_unknown_queue(capsys):
    assert main(["site", "render", "local-slurm", "--queue", "gpu"]) == 3
    assert "has no queue 'gpu'" in capsys.readouterr().err


def test_check_bad_config(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(
        '[site]\nname = "bad"\nscheduler = "slurm"\n'
        "[queues.debug]\nmaxnodes = 1\ncores_per_node = 1\n"
    )
    assert main(["site", "check", str(tmp_path / "bad.toml")]) == 3
    out, err = capsys.readouterr()
    assert "FAIL config" in out
    assert "unknown key 'maxnodes' (did you mean 'max_nodes'?)" in err


def test_check_reports_missing_scheduler_commands(tmp_path, capsys, monkeypatch):
    # only bash on PATH (for bash -n), no scheduler commands
    os.symlink("/bin/bash", tmp_path / "bash")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["site", "check", "local-slurm"]) == 3
    out = capsys.readouterr().out
    assert "FAIL scheduler commands: missing from PATH: sbatch, squeue, scancel, sacct" in out


def test_submit_with_missing_commands_submits_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = JobSpec(
        command=("true",), name="x", workdir=str(tmp_path), exit_code_file=str(tmp_path / "x.exit")
    )
    with pytest.raises(ConfigError, match="command\\(s\\) not on PATH: sbatch"):
        submit_job(load_site("local-slurm"), spec)
    assert not (tmp_path / "x.sh").exists()


def test_queue_on_localhost(capsys):
    assert main(["queue", "--site", "localhost"]) == 0
    assert "JOBID" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name",
    ["localhost", "local-slurm", "local-sge", "example-slurm-gpu", "example-pbs", "example-sge"],
)
def test_check_site_renders_every_shipped_site(name):
    from hpcem.cluster.check import check_site

    findings = {f.check: f for f in check_site(name)}
    assert findings["config"].ok
    renders = [f for c, f in findings.items() if c.startswith("render queue")]
    assert renders and all(f.ok for f in renders), renders


def test_check_shows_the_parsl_address_and_warns_on_loopback_for_cluster_sites(capsys):
    main(["site", "check", "local-slurm"])  # exit code: depends on SLURM being installed
    out = capsys.readouterr().out
    assert "ok   parsl address: workers connect to 127.0.0.1, a port in 54000-55000" in out
    assert (
        "WARN parsl address: 127.0.0.1 is loopback (scheduler slurm, queue(s) debug, long with "
        "max_nodes > 1): only workers on this host can reach the controller" in out
    )
    assert main(["site", "check", "localhost"]) == 0
    out = capsys.readouterr().out
    assert "ok   parsl address: workers connect to 127.0.0.1" in out and "WARN" not in out


def test_check_names_a_missing_parsl_interface(tmp_path, capsys):
    text = (Path(load_site("localhost").path).read_text()).replace(
        'address = "127.0.0.1"', 'address = "nosuchif0"'
    )
    (tmp_path / "here.toml").write_text(text)
    assert main(["site", "check", str(tmp_path / "here.toml")]) == 3
    out = capsys.readouterr().out
    assert "FAIL parsl address: " in out and "no interface 'nosuchif0' on this host" in out


@pytest.mark.slow
def test_check_test_runs_the_parsl_worker_command_on_a_node(tmp_path, capsys):
    assert main(["site", "check", "localhost", "--test", "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert f"ok   parsl worker command on a node: {sys.executable} -P -m parsl." in out
    text = (Path(load_site("localhost").path).read_text()).replace(
        "high_throughput.process_worker_pool", "high_throughput.no_such_pool"
    )
    (tmp_path / "broken.toml").write_text(text)
    assert main(["site", "check", str(tmp_path / "broken.toml"), "--test", "--timeout", "60"]) == 3
    out = capsys.readouterr().out
    assert "ok   test job" in out
    assert "FAIL parsl worker command on a node: job " in out and "exit code 1" in out
