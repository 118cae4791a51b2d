"""Job scripts from Jinja2 templates: StrictUndefined, every user value shell-quoted.

All directives come from the template and the site config; Python only gathers the
values (:func:`job_context`). A site may name its own template (``site.template``).
"""

from __future__ import annotations

import re
import shlex
import sys
from importlib import resources
from pathlib import Path

import jinja2

from hpcem.cluster.job import JobSpec, safe_job_name
from hpcem.cluster.site import Site, check_limits, format_walltime
from hpcem.errors import TemplateError

_DIRECTIVE_UNSAFE = re.compile(r"[\s'\"#\\]")


def shquote(value) -> str:
    """Quote one value for the shell (``shlex.quote``)."""
    return shlex.quote(str(value))


def directive_value(value) -> str:
    """A value placed in a ``#SBATCH``/``#PBS``/``#$`` line: refuse whitespace and quotes.

    Directive lines are parsed by the scheduler, not the shell, so quoting does not work
    the same everywhere; values that need it are refused instead.
    """
    text = str(value)
    if _DIRECTIVE_UNSAFE.search(text) or not text:
        raise TemplateError(
            f"value {text!r} cannot go into a scheduler directive (no spaces, quotes, '#' "
            "or backslashes; use a simpler path or name)"
        )
    return text


def shipped_template_dir() -> Path:
    return Path(str(resources.files("hpcem.queue_templates")))


def template_path(site: Site) -> Path:
    """The template a site uses: its own ``template`` or ``<scheduler>.sh.j2`` shipped."""
    if site.template:
        return Path(site.template)
    from hpcem.cluster.schedulers import get_scheduler

    own = getattr(get_scheduler(site.scheduler), "TEMPLATE", None)  # a plugin's template
    return Path(own) if own else shipped_template_dir() / f"{site.scheduler}.sh.j2"


def _environment(folder: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        # the site's own folder first, then the shipped one (for _job_body.sh.j2)
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(str(folder)),
                jinja2.FileSystemLoader(str(shipped_template_dir())),
            ]
        ),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shquote"] = shquote
    env.filters["directive"] = directive_value
    return env


def render_template(path: Path, context: dict) -> str:
    """Render one template file; errors become TemplateError with ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"queue template {path}: no such file")
    env = _environment(path.parent)
    try:
        return env.get_template(path.name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"{exc.filename or path}:{exc.lineno}: template syntax error: {exc.message}"
        ) from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{_template_where(path)}: undefined variable: {exc.message}") from None
    except TemplateError as exc:
        raise TemplateError(f"{_template_where(path)}: {exc}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{_template_where(path)}: {exc}") from None


def _template_where(path: Path) -> str:
    """``file:line`` of the innermost template frame of the exception being handled."""
    tb = sys.exc_info()[2]
    where = f"{path}:?"
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def job_context(site: Site, spec: JobSpec) -> dict:
    """All values a template may use, with site/queue defaults applied and limits checked.

    Raises ConfigError for an unknown queue and ValidationError for requests over limits.
    """
    queue = site.queue(spec.queue)
    walltime_s = spec.walltime_s or site.walltime_s
    cores_per_node = spec.tasks_per_node * spec.cores_per_task
    check_limits(
        site,
        queue,
        nodes=spec.nodes,
        cores_per_node=cores_per_node,
        memory_mb=spec.memory_mb,
        walltime_s=walltime_s,
        gpus=spec.gpus,
    )
    env = {**site.env_vars, **spec.env}
    return {
        "site": {
            "name": site.name,
            "scheduler": site.scheduler,
            "env_setup": list(site.env_setup),
            "directives": list(site.directives),
            "scratch_dir": site.scratch_dir,
        },
        "queue": {
            "name": queue.name,
            "directives": list(queue.directives),
            "parallel_environment": queue.parallel_environment,
        },
        "job": {
            # every hpcem job name starts with "hpcem" so `hpcem queue` can find them
            "name": safe_job_name(
                spec.name if spec.name.startswith("hpcem") else f"hpcem-{spec.name}"
            ),
            "label": spec.label,
            "command": list(spec.command),
            "workdir": spec.workdir,
            "stdout": spec.stdout or str(Path(spec.workdir) / "job.out"),
            "stderr": spec.stderr,
            "exit_code_file": spec.exit_code_file,
            "nodes": spec.nodes,
            "tasks_per_node": spec.tasks_per_node,
            "tasks": spec.tasks,
            "cores_per_task": spec.cores_per_task,
            "cores_per_node": cores_per_node,
            "memory_mb": spec.memory_mb or 0,
            "walltime": format_walltime(walltime_s),
            "walltime_s": walltime_s,
            "gpus": spec.gpus,
            "account": spec.account if spec.account is not None else site.account,
            "qos": spec.qos if spec.qos is not None else site.qos,
            "env": env,
        },
    }


def render_job_script(site: Site, spec: JobSpec) -> str:
    """The job script that would be submitted for ``spec`` on ``site``."""
    return render_template(template_path(site), job_context(site, spec))
