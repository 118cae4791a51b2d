"""Queue templates: every template x every shipped site renders and passes bash -n;
user values are quoted; template errors carry file:line."""

from __future__ import annotations

import subprocess

import pytest

from hpcem.cluster.check import bash_syntax_ok
from hpcem.cluster.job import JobSpec
from hpcem.cluster.site import list_sites, load_site
from hpcem.cluster.templates import (
    job_context,
    render_job_script,
    render_template,
    shipped_template_dir,
)
from hpcem.errors import TemplateError

TEMPLATES = sorted(
    p.name for p in shipped_template_dir().glob("*.sh.j2") if not p.name.startswith("_")
)
SITES = [name for name, _ in list_sites()]
EVIL = "; rm -rf ~ $(touch PWNED) `touch PWNED2` 'quote\" \nnewline"


def spec_for(tmp_path, site, queue, **kw):
    q = site.queue(queue)
    return JobSpec(
        command=("echo", EVIL),
        name=EVIL,
        label=EVIL,
        workdir=str(tmp_path),
        exit_code_file=str(tmp_path / "job.exit"),
        stdout=str(tmp_path / "job.out"),
        nodes=min(2, q.max_nodes),
        tasks_per_node=2,
        cores_per_task=1,
        memory_mb=q.memory_mb_per_node,
        gpus=q.gpus_per_node,
        walltime_s=min(600, q.max_walltime_s or 600),
        queue=queue,
        env={"HPCEM_TEST": EVIL},
        **kw,
    )


def test_all_schedulers_have_templates():
    assert set(TEMPLATES) == {"slurm.sh.j2", "pbs.sh.j2", "sge.sh.j2", "local.sh.j2"}


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("site_name", SITES)
def test_every_template_for_every_site_passes_bash_n(tmp_path, template, site_name):
    site = load_site(site_name)
    for queue in site.queues:
        text = render_template(
            shipped_template_dir() / template, job_context(site, spec_for(tmp_path, site, queue))
        )
        ok, msg = bash_syntax_ok(text)
        assert ok, f"{template} x {site_name}/{queue}: {msg}\n{text}"
        assert "rm -rf ~" in text  # present, but only inside quotes (run below)


def test_scheduler_directives(tmp_path):
    site = load_site("example-slurm-gpu")
    text = render_job_script(site, spec_for(tmp_path, site, "gpu"))
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --account=cryoem-lab",
        "#SBATCH --qos=normal",
        "#SBATCH --constraint=a100",
        "#SBATCH --requeue",
        "module load gcc/12.2 cuda/12.2",
    ):
        assert line in text
    pbs = render_job_script(
        load_site("example-pbs"), spec_for(tmp_path, load_site("example-pbs"), "gpuq")
    )
    assert "#PBS -l select=2:ncpus=2:mpiprocs=2:mem=380000mb:ngpus=4" in pbs
    sge = render_job_script(
        load_site("local-sge"), spec_for(tmp_path, load_site("local-sge"), "all.q")
    )
    assert "#$ -pe smp 2" in sge and "#$ -V" in sge


def test_shell_metacharacters_stay_harmless(tmp_path):
    """Run the rendered localhost script: the label and argument come out verbatim."""
    site = load_site("localhost")
    spec = JobSpec(
        command=("printf", "%s|", EVIL),
        name=EVIL,
        label=EVIL,
        workdir=str(tmp_path),
        exit_code_file=str(tmp_path / "job.exit"),
        stdout=str(tmp_path / "job.out"),
        env={"HPCEM_TEST": EVIL},
    )
    script = tmp_path / "job.sh"
    script.write_text(
        render_job_script(site, spec).replace(
            'wait "$hpcem_child"',
            'wait "$hpcem_child"; printf "%s|" "$HPCEM_LABEL" "$HPCEM_TEST"',
            1,
        )
    )
    subprocess.run(["bash", str(script)], cwd=tmp_path, check=True, timeout=30)
    assert (tmp_path / "job.out").read_text() == f"{EVIL}|{EVIL}|{EVIL}|"
    assert not list(tmp_path.glob("PWNED*"))
    assert (tmp_path / "job.exit").read_text().strip() == "0"


def test_evil_value_in_directive_is_refused(tmp_path):
    site = load_site("local-slurm")
    spec = JobSpec(
        command=("true",),
        name="x",
        workdir=str(tmp_path),
        exit_code_file=str(tmp_path / "x.exit"),
        stdout=str(tmp_path / "a b; rm.out"),
    )
    with pytest.raises(
        TemplateError, match=r"slurm.sh.j2:\d+: value .* cannot go into a scheduler directive"
    ):
        render_job_script(site, spec)


def test_template_syntax_error_has_file_and_line(tmp_path):
    bad = tmp_path / "bad.sh.j2"
    bad.write_text("#!/bin/bash\n#SBATCH --x=1\n{% if job.nodes %}\n")
    with pytest.raises(TemplateError, match=rf"{bad}:3: template syntax error"):
        render_template(bad, {"job": {"nodes": 1}})


def test_template_undefined_variable_has_file_and_line(tmp_path):
    bad = tmp_path / "bad.sh.j2"
    bad.write_text("#!/bin/bash\n\n#SBATCH --x={{ job.nodez }}\n")
    with pytest.raises(TemplateError, match=rf"{bad}:3: undefined variable: .*'nodez'"):
        render_template(bad, {"job": {"nodes": 1}})


def test_site_with_its_own_template(tmp_path):
    (tmp_path / "mine.sh.j2").write_text(
        "#!/bin/bash\n#SBATCH --partition={{ queue.name | directive }}\n#SBATCH --mine\n"
        '{% include "_job_body.sh.j2" %}\n'
    )
    (tmp_path / "own.toml").write_text(
        '[site]\nname = "own"\nscheduler = "slurm"\ntemplate = "mine.sh.j2"\n'
        "[queues.q]\nmax_nodes = 1\ncores_per_node = 1\n"
    )
    site = load_site(str(tmp_path / "own.toml"))
    text = render_job_script(
        site,
        JobSpec(
            command=("true",),
            name="x",
            workdir=str(tmp_path),
            exit_code_file=str(tmp_path / "x.exit"),
        ),
    )
    assert "#SBATCH --mine" in text and "HPCEM_EXIT_FILE" in text
    assert bash_syntax_ok(text)[0]


def test_site_template_missing(tmp_path):
    (tmp_path / "own.toml").write_text(
        '[site]\nname = "own"\nscheduler = "slurm"\ntemplate = "nope.sh.j2"\n'
        "[queues.q]\nmax_nodes = 1\ncores_per_node = 1\n"
    )
    site = load_site(str(tmp_path / "own.toml"))
    with pytest.raises(TemplateError, match="nope.sh.j2: no such file"):
        render_job_script(
            site,
            JobSpec(
                command=("true",),
                name="x",
                workdir=str(tmp_path),
                exit_code_file=str(tmp_path / "x.exit"),
            ),
        )
