"""The one error hierarchy of hpcem.

Every error raised on purpose by hpcem is an :class:`HpcemError`. Messages say what
failed, where (file, line, key, run, step) and, where it helps, what to do. Library code
raises; only the command line turns an error into one printed line and an exit code.
"""

from __future__ import annotations


class HpcemError(Exception):
    """Root of all hpcem errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


# --- configuration and templates -------------------------------------------------------
class ConfigError(HpcemError):
    """A site config (or other configuration file) is missing, unreadable or invalid."""

    exit_code = 3


class TemplateError(ConfigError):
    """A queue template has a syntax error, an undefined variable or renders badly."""


# --- external commands and schedulers --------------------------------------------------
class CommandError(HpcemError):
    """An external command failed, could not be found, or timed out.

    Carries ``argv``, ``returncode`` (None when it never ran or timed out), ``stdout``
    and ``stderr`` so that callers and users see exactly what happened.
    """

    exit_code = 4

    def __init__(self, message, argv=(), returncode=None, stdout="", stderr=""):
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class CommandNotFoundError(CommandError):
    """The program of an external command is not on PATH."""


class SchedulerError(HpcemError):
    """A batch scheduler refused a request or answered with text we cannot parse."""

    exit_code = 4


class SubmitError(SchedulerError):
    """A job submission was rejected; the message carries the scheduler's stderr."""


# --- user input ------------------------------------------------------------------------
class ValidationError(HpcemError):
    """Parameters or inputs of a run are invalid. ``problems`` lists every finding."""

    exit_code = 2

    def __init__(self, message, problems=()):
        self.problems = list(problems) or [message]
        super().__init__(message)


class DataFormatError(HpcemError):
    """A data file (MRC, TIFF, STAR, ...) is corrupt, truncated or not what it claims."""

    exit_code = 5


class QueryError(ValidationError):
    """A set query string cannot be parsed or names an unknown column."""


# --- the project store -----------------------------------------------------------------
class StoreError(HpcemError):
    """The project store cannot be read or written as asked."""

    exit_code = 6


class NotAProjectError(StoreError):
    """A folder is not an hpcem project (no project index)."""


class CorruptStoreError(StoreError):
    """A store file is corrupt or truncated (it is never modified by the reader)."""


class SchemaVersionError(StoreError):
    """A store file was written by a newer (or unknown) schema version."""


class LockedError(StoreError):
    """Another process holds the write lock of a store file."""


class MissingDataError(StoreError):
    """Files referenced by a set (images, movies) are missing."""


# --- protocols and runs ----------------------------------------------------------------
class ProtocolError(HpcemError):
    """A protocol is unknown, badly declared, or a plugin failed to load."""

    exit_code = 2


class RunError(HpcemError):
    """A run cannot be launched, continued, stopped or copied as asked."""

    exit_code = 7


class StepError(RunError):
    """A step of a run failed; carries the run and step ids in its message."""


class ItemRejected(HpcemError):
    """One item of a run (a micrograph, a movie) cannot be processed or stored.

    Raised by a step for its own item: the step is recorded as ``rejected`` with this
    message (e.g. ``"micrograph 3: 1048576 NaN pixels"``) and the run goes on without
    it. Per-item failures are data, not a crashed run.
    """


class WorkerLostError(RunError):
    """The worker process running a step died (killed, out of memory, segfault).

    The controller retries such a step (per-protocol ``retries``, default 1).
    """


class FencedError(RunError):
    """A controller lost its lease: another attempt took the run over (fencing).

    The old controller must stop without writing anything more.
    """


class StorageFullError(StoreError):
    """The project's filesystem is full, over quota or read-only."""
