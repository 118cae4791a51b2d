"""A run's log: a human-readable ``run.log`` and a structured ``events.jsonl``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class RunLog:
    """Appends one line per event to both files in the run's folder."""

    def __init__(self, run_dir: Path) -> None:
        self.text_path = Path(run_dir) / "run.log"
        self.json_path = Path(run_dir) / "events.jsonl"

    def event(self, step: str, message: str, level: str = "info", detail: str = "") -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        text = f"{stamp} {level.upper():7s} [{step}] {message}\n"
        if detail:
            text += "".join(f"    {line}\n" for line in detail.rstrip().splitlines())
        record = {"time": now, "level": level, "step": step, "message": message}
        if detail:
            record["detail"] = detail
        _append(self.text_path, text)
        _append(self.json_path, json.dumps(record) + "\n")


def _append(path: Path, text: str) -> None:
    # O_APPEND writes of one line are atomic enough for a log read by humans and `--follow`.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
