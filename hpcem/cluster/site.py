"""Site configs: one TOML file per site, found by name, checked against a schema.

A site says which scheduler runs its jobs, which queues exist and their limits, the
defaults, how to set up the environment, how to launch MPI, where programs and scratch
live, which extra directives every job gets and how Parsl's workers reach the controller
(``[parsl]``: address, ports, worker command). ``load_site(name)`` finds the file on the
search path (``$HPCEM_SITE_PATH`` dirs, ``~/.config/hpcem/sites``, the shipped
``site_configs/``), checks every key and returns a frozen :class:`Site`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
import sys
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from hpcem.errors import ConfigError, ValidationError

#: Parsl's worker pool as a module: run by the site's (or the controller's) interpreter, not
#: as the ``process_worker_pool.py`` script found on PATH. ``-P``: the block's folder (inside
#: the project) is not put on ``sys.path``.
PARSL_WORKER_MODULE = "parsl.executors.high_throughput.process_worker_pool"
DEFAULT_WORKER_COMMAND = ("{python}", "-P", "-m", PARSL_WORKER_MODULE)
#: Placeholders of ``[parsl] worker_command``.
WORKER_COMMAND_PLACEHOLDERS = {
    "python": "the site's [site] python",
    "controller_python": "the interpreter running the controller (its sys.executable)",
}
SITE_PATH_ENV = "HPCEM_SITE_PATH"
USER_SITE_DIR = Path("~/.config/hpcem/sites")


# ----------------------------------------------------------------------------- model
@dataclasses.dataclass(frozen=True)
class Queue:
    """One queue/partition and its per-job limits (None: no limit)."""

    name: str
    max_nodes: int
    cores_per_node: int
    memory_mb_per_node: int | None = None
    max_walltime_s: int | None = None
    gpus_per_node: int = 0
    directives: tuple[str, ...] = ()
    description: str = ""
    parallel_environment: str = "smp"  # SGE only: the PE that multi-slot jobs request


@dataclasses.dataclass(frozen=True)
class ParslSettings:
    """How Parsl's workers on the nodes reach the run's controller (``[parsl]`` table).

    ``address``: an IP address, a network interface name (``ib0``) or ``"auto"``, resolved
    on the controller's host by :func:`resolve_parsl_address`. ``port_range``: the ports the
    interchange may listen on for workers (inclusive). ``worker_command``: the argv that
    starts Parsl's worker pool on a node, before Parsl's own options.
    """

    address: str = "127.0.0.1"
    port_range: tuple[int, int] = (54000, 55000)
    worker_command: tuple[str, ...] = DEFAULT_WORKER_COMMAND

    @property
    def address_kind(self) -> str:
        """``"ip"``, ``"interface"`` or ``"auto"``."""
        if self.address == "auto":
            return "auto"
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            return "interface"
        return "ip"


@dataclasses.dataclass(frozen=True)
class Site:
    """A checked site config. Built by :func:`parse_site`; never does I/O itself."""

    name: str
    path: str
    scheduler: str
    queues: Mapping[str, Queue]
    default_queue: str
    description: str = ""
    template: str = ""  # absolute path of the job-script template ("" = shipped one)
    account: str = ""
    qos: str = ""
    walltime_s: int = 3600
    env_setup: tuple[str, ...] = ()
    env_vars: Mapping[str, str] = dataclasses.field(default_factory=dict)
    mpi_command: tuple[str, ...] = ()
    mpi_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    programs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    scratch_dir: str = ""
    directives: tuple[str, ...] = ()
    python: str = "python3"
    poll_interval_s: float = 5.0
    poll_max_interval_s: float = 60.0
    command_timeout_s: float = 60.0
    parsl: ParslSettings = ParslSettings()

    def queue(self, name: str | None = None) -> Queue:
        """The named queue (default: the site's default queue); ConfigError if unknown."""
        qname = name or self.default_queue
        if qname not in self.queues:
            raise ConfigError(
                f"{self.path}: site {self.name!r} has no queue {qname!r}"
                f"{_did_you_mean(qname, self.queues)}; queues: {', '.join(self.queues)}"
            )
        return self.queues[qname]


# ----------------------------------------------------------------------------- schema
# (type, required) per key; types are python types or "walltime" / "strlist" / "strmap".
_SCHEMA: dict[str, dict[str, tuple[Any, bool]]] = {
    "site": {
        "name": (str, True),
        "scheduler": (str, True),
        "description": (str, False),
        "template": (str, False),
        "default_queue": (str, False),
        "directives": ("strlist", False),
        "python": (str, False),
    },
    "defaults": {"account": (str, False), "qos": (str, False), "walltime": ("walltime", False)},
    "environment": {"setup": ("strlist", False), "variables": ("strmap", False)},
    "mpi": {"command": ("strlist", False), "env": ("strmap", False)},
    "programs": {},  # free-form name -> path (strings)
    "scratch": {"dir": (str, False)},
    "polling": {
        "interval_s": ("number", False),
        "max_interval_s": ("number", False),
        "command_timeout_s": ("number", False),
    },
    "parsl": {
        "address": (str, False),
        "port_range": ("portrange", False),
        "worker_command": ("strlist", False),
    },
}
_QUEUE_SCHEMA: dict[str, tuple[Any, bool]] = {
    "max_nodes": (int, True),
    "cores_per_node": ("cores", True),
    "memory_mb_per_node": (int, False),
    "max_walltime": ("walltime", False),
    "gpus_per_node": (int, False),
    "directives": ("strlist", False),
    "description": (str, False),
    "parallel_environment": (str, False),
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")  # Linux IFNAMSIZ: 15 chars
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_walltime(value: Any, where: str = "walltime") -> int:
    """Seconds from ``"D-HH:MM:SS"``, ``"HH:MM:SS"``, ``"MM:SS"`` or an int of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a walltime like '01:30:00', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{where}: walltime must be positive, got {value}")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", value.strip())
        if m:
            days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
            if minutes < 60 and seconds < 60 and (not m.group(1) or hours < 24):
                total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
                if total > 0:
                    return total
    raise ConfigError(
        f"{where}: cannot read walltime {value!r} (use 'HH:MM:SS', 'D-HH:MM:SS' or seconds)"
    )


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` (hours may exceed 24), the form SLURM, PBS and SGE all accept."""
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _check_value(kind, value, where: str) -> Any:
    if kind == "walltime":
        return parse_walltime(value, where)
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if kind == "strmap":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where}: expected a table of strings, got {value!r}")
        return dict(value)
    if kind == "cores":
        if value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a number of cores or 'auto', got {value!r}")
        return value
    if kind == "portrange":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(f"{where}: expected [lowest, highest] port numbers, got {value!r}")
        lo, hi = value
        if not 1024 <= lo < hi <= 65535:
            raise ConfigError(
                f"{where}: ports must satisfy 1024 <= lowest < highest <= 65535, got [{lo}, {hi}]"
            )
        return (lo, hi)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where}: expected a positive number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")
        return value
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _check_table(table: Any, schema: dict, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    out = {}
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key, schema)}")
        out[key] = _check_value(schema[key][0], value, f"{where}.{key}")
    for key, (_, required) in schema.items():
        if required and key not in table:
            raise ConfigError(f"{where}: missing required key {key!r}")
    return out


def parse_site(data: Mapping[str, Any], path: str, search_dirs=()) -> Site:
    """Check a parsed TOML document against the schema and build a :class:`Site`.

    ``path`` is only used in messages and to resolve a relative ``template``.
    Raises :class:`ConfigError` naming the file and key of the first problem.
    """
    for section in data:
        if section not in _SCHEMA and section != "queues":
            raise ConfigError(
                f"{path}: unknown section [{section}]{_did_you_mean(section, [*_SCHEMA, 'queues'])}"
            )
    if "site" not in data:
        raise ConfigError(f"{path}: missing section [site]")
    s = {
        name: _check_table(data.get(name, {}), _SCHEMA[name], f"{path}: {name}")
        for name in _SCHEMA
        if name != "programs"
    }
    for key in s["environment"].get("variables", {}):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{path}: environment.variables: {key!r} is not a variable name")
    programs = data.get("programs", {})
    if not isinstance(programs, dict) or not all(isinstance(v, str) for v in programs.values()):
        raise ConfigError(f'{path}: programs: expected a table of name = "path" strings')

    site, defaults = s["site"], s["defaults"]
    from hpcem.cluster.schedulers import scheduler_names

    known = scheduler_names()  # built-in ones and plugins (entry points)
    if site["scheduler"] not in known:
        raise ConfigError(
            f"{path}: site.scheduler: unknown scheduler {site['scheduler']!r}"
            f"{_did_you_mean(site['scheduler'], known)}; known: {', '.join(known)}"
        )
    if not _NAME_RE.match(site["name"]):
        raise ConfigError(f"{path}: site.name: {site['name']!r} is not a simple name")

    raw_queues = data.get("queues")
    if not isinstance(raw_queues, dict) or not raw_queues:
        raise ConfigError(f"{path}: no queues: add at least one [queues.NAME] table")
    queues: dict[str, Queue] = {}
    for qname, qtable in raw_queues.items():
        q = _check_table(qtable, _QUEUE_SCHEMA, f"{path}: queues.{qname}")
        if q["cores_per_node"] == "auto":
            if site["scheduler"] != "local":
                raise ConfigError(
                    f"{path}: queues.{qname}.cores_per_node: 'auto' (this machine's cores) "
                    f"only fits scheduler 'local'; the nodes of a {site['scheduler']} site "
                    "are other machines: give their number of cores"
                )
            q["cores_per_node"] = usable_cores()
        if q["max_nodes"] < 1 or q["cores_per_node"] < 1:
            raise ConfigError(f"{path}: queues.{qname}: max_nodes and cores_per_node must be >= 1")
        queues[qname] = Queue(
            name=qname,
            max_nodes=q["max_nodes"],
            cores_per_node=q["cores_per_node"],
            memory_mb_per_node=q.get("memory_mb_per_node"),
            max_walltime_s=q.get("max_walltime"),
            gpus_per_node=q.get("gpus_per_node", 0),
            directives=q.get("directives", ()),
            description=q.get("description", ""),
            parallel_environment=q.get("parallel_environment", "smp"),
        )
    default_queue = site.get("default_queue", next(iter(queues)))
    if default_queue not in queues:
        raise ConfigError(
            f"{path}: site.default_queue: no queue {default_queue!r}"
            f"{_did_you_mean(default_queue, queues)}; queues: {', '.join(queues)}"
        )
    walltime_s = defaults.get("walltime", 3600)
    limit = queues[default_queue].max_walltime_s
    if limit is not None and walltime_s > limit:
        raise ConfigError(
            f"{path}: defaults.walltime {format_walltime(walltime_s)} is over the limit "
            f"{format_walltime(limit)} of the default queue {default_queue!r}"
        )
    template = site.get("template", "")
    if template and not os.path.isabs(template):
        template = str((Path(path).parent / template).resolve())
    polling = s["polling"]
    parsl = _parsl_settings(s["parsl"], f"{path}: parsl")
    return Site(
        name=site["name"],
        path=str(path),
        scheduler=site["scheduler"],
        queues=queues,
        default_queue=default_queue,
        description=site.get("description", ""),
        template=template,
        account=defaults.get("account", ""),
        qos=defaults.get("qos", ""),
        walltime_s=walltime_s,
        env_setup=s["environment"].get("setup", ()),
        env_vars=s["environment"].get("variables", {}),
        mpi_command=s["mpi"].get("command", ()),
        mpi_env=s["mpi"].get("env", {}),
        programs=dict(programs),
        scratch_dir=s["scratch"].get("dir", ""),
        directives=site.get("directives", ()),
        python=site.get("python", "python3"),
        poll_interval_s=polling.get("interval_s", 5.0),
        poll_max_interval_s=polling.get("max_interval_s", 60.0),
        command_timeout_s=polling.get("command_timeout_s", 60.0),
        parsl=parsl,
    )


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _parsl_settings(table: Mapping[str, Any], where: str) -> ParslSettings:
    address = table.get("address", ParslSettings.address).strip()
    if address in ("", "*", "0.0.0.0", "::"):
        raise ConfigError(
            f"{where}.address: {address!r} would listen on every interface; give one IP "
            "address, an interface name (e.g. 'ib0') or 'auto'"
        )
    if address != "auto":
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not _IFNAME_RE.match(address):
                raise ConfigError(
                    f"{where}.address: {address!r} is neither an IP address, an interface "
                    "name (at most 15 letters, digits, '_', '.', ':', '@', '-') nor 'auto'"
                ) from None
    command = table.get("worker_command", DEFAULT_WORKER_COMMAND)
    if not command or not command[0].strip():
        raise ConfigError(
            f"{where}.worker_command: empty; give the argv that starts Parsl's "
            f"worker pool, e.g. {list(DEFAULT_WORKER_COMMAND)}"
        )
    for word in command:
        for name in _PLACEHOLDER_RE.findall(word):
            if name not in WORKER_COMMAND_PLACEHOLDERS:
                raise ConfigError(
                    f"{where}.worker_command: unknown placeholder {{{name}}} in {word!r}"
                    f"{_did_you_mean(name, WORKER_COMMAND_PLACEHOLDERS)}; known: "
                    + ", ".join(f"{{{k}}} ({v})" for k, v in WORKER_COMMAND_PLACEHOLDERS.items())
                )
        if _PLACEHOLDER_RE.sub("", word).count("{") or _PLACEHOLDER_RE.sub("", word).count("}"):
            raise ConfigError(f"{where}.worker_command: unbalanced brace in {word!r}")
    return ParslSettings(
        address=address,
        port_range=table.get("port_range", ParslSettings.port_range),
        worker_command=tuple(command),
    )


def worker_command(site: Site, controller_python: str | None = None) -> list[str]:
    """The site's Parsl worker command with its placeholders filled in."""
    values = {"python": site.python, "controller_python": controller_python or sys.executable}
    return [
        _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], word)
        for word in site.parsl.worker_command
    ]


def resolve_parsl_address(site: Site) -> str:
    """The IP address the controller's interchange listens on for ``site``'s workers.

    An IP is taken as it is; an interface name is looked up on this host (Parsl's
    ``address_by_interface``); ``auto`` is the first IPv4 address of an up, non-loopback
    interface (psutil's list, as Parsl's ``get_all_addresses`` uses - but without that
    function's host-name and internet look-ups). Reads this host's interfaces: call it on
    the controller's host. ConfigError when nothing fits.
    """
    settings = site.parsl
    where = f"{site.path}: parsl.address"
    if settings.address_kind == "ip":
        return settings.address
    import psutil
    from parsl.addresses import address_by_interface

    interfaces = psutil.net_if_addrs()
    if settings.address_kind == "interface":
        if settings.address not in interfaces:
            raise ConfigError(
                f"{where}: no interface {settings.address!r} on this host"
                f"{_did_you_mean(settings.address, interfaces)}; interfaces: "
                f"{', '.join(sorted(interfaces))}"
            )
        try:
            return address_by_interface(settings.address)
        except OSError as exc:
            raise ConfigError(
                f"{where}: interface {settings.address!r} has no IPv4 address ({exc.strerror})"
            ) from None
    stats = psutil.net_if_stats()
    for name, addrs in interfaces.items():
        if name in stats and not stats[name].isup:
            continue
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    raise ConfigError(
        f"{where}: 'auto' found no up, non-loopback IPv4 interface on this host "
        f"(interfaces: {', '.join(sorted(interfaces))}); name the address or interface"
    )


def parsl_address_is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1: only workers on the controller's host can connect."""
    return ipaddress.ip_address(address).is_loopback


# ----------------------------------------------------------------------------- finding
def site_search_path() -> list[Path]:
    """Folders searched for ``NAME.toml``, first match wins."""
    dirs = [Path(p) for p in os.environ.get(SITE_PATH_ENV, "").split(os.pathsep) if p]
    dirs.append(USER_SITE_DIR.expanduser())
    dirs.append(Path(str(resources.files("hpcem.site_configs"))))
    return dirs


def find_site_file(name: str) -> Path:
    """Path of the config file of site ``name`` (or ``name`` itself if it is a .toml path)."""
    if name.endswith(".toml"):
        p = Path(name)
        if not p.is_file():
            raise ConfigError(f"site config {name}: no such file")
        return p
    if not _NAME_RE.match(name):
        raise ConfigError(f"{name!r} is not a site name (letters, digits, '_', '.', '-')")
    for d in site_search_path():
        candidate = d / f"{name}.toml"
        if candidate.is_file():
            return candidate
    known = [s for s, _ in list_sites()]
    raise ConfigError(
        f"unknown site {name!r}{_did_you_mean(name, known)}; known sites: "
        f"{', '.join(known) or 'none'} (searched ${SITE_PATH_ENV}, ~/.config/hpcem/sites, "
        "shipped site_configs)"
    )


def load_site(name: str) -> Site:
    """Find, read and check the site config ``name`` (a name or a path to a .toml file)."""
    path = find_site_file(name)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_site(data, str(path))


def list_sites() -> list[tuple[str, Path]]:
    """(name, path) of every site on the search path; earlier folders shadow later ones."""
    seen: dict[str, Path] = {}
    for d in site_search_path():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                seen.setdefault(f.stem, f)
    return sorted(seen.items())


def default_site_name(project_default: str | None = None) -> str:
    """The site to use when none is named: the project's default site, else ``$HPCEM_SITE``,
    else localhost (a project's own choice is more specific than the user's environment)."""
    return project_default or os.environ.get("HPCEM_SITE") or "localhost"


def check_limits(
    site: Site,
    queue: Queue,
    *,
    nodes: int,
    cores_per_node: int,
    memory_mb: int | None,
    walltime_s: int,
    gpus: int,
) -> None:
    """Raise ValidationError listing every request over the queue's limits."""
    problems = []
    where = f"site {site.name!r} queue {queue.name!r}"
    if nodes > queue.max_nodes:
        problems.append(f"{nodes} nodes requested, {where} allows {queue.max_nodes}")
    if cores_per_node > queue.cores_per_node:
        problems.append(
            f"{cores_per_node} cores per node requested, {where} has {queue.cores_per_node}"
        )
    if memory_mb and queue.memory_mb_per_node and memory_mb > queue.memory_mb_per_node:
        problems.append(
            f"{memory_mb} MB per node requested, {where} has {queue.memory_mb_per_node} MB"
        )
    if queue.max_walltime_s is not None and walltime_s > queue.max_walltime_s:
        problems.append(
            f"walltime {format_walltime(walltime_s)} is over the limit "
            f"{format_walltime(queue.max_walltime_s)} of {where}"
        )
    if gpus > queue.gpus_per_node:
        problems.append(f"{gpus} GPUs per node requested, {where} has {queue.gpus_per_node}")
    if problems:
        raise ValidationError("; ".join(problems), problems)
