"""``hpcem site`` and ``hpcem queue``: sysadmin and job-watching commands."""

COMMANDS: list = []
