"""A run's log: a human-readable ``run.log`` and a structured ``events.jsonl``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hpcem.store.safeopen import append_bytes


class RunLog:
    """Appends one line per event to both files in the run's folder.

    The files are opened without following links (a ``run.log`` or ``events.jsonl``
    planted as a symlink, or a linked run folder, gives StoreError); a full or read-only
    disk gives StorageFullError (a line that does not fit is not written).
    """

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
        # O_APPEND writes of one line are atomic enough for a log read by humans and
        # `--follow`; the run folder and runs/ above it must be real folders (levels=2).
        append_bytes(self.text_path, text.encode())
        append_bytes(self.json_path, (json.dumps(record) + "\n").encode())
