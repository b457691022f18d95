"""Reports the farm could not take yet (the scheduler unreachable, a build run with --local),
kept on the orchestrator and sent with the next build that reaches the scheduler.

Bounded: at most `limit` wait; past that the oldest go, and how many went is counted and sent
with the next delivered report (`dropped_before`), so the run store knows what it lacks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .report import RunReport

DEFAULT_LIMIT = 100


def default_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "nx-farm" / "runs-outbox"


class Outbox:
    def __init__(self, directory: Path | None = None, limit: int = DEFAULT_LIMIT) -> None:
        self.directory, self.limit = directory or default_dir(), limit

    def put(self, report: RunReport) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=self.directory, prefix=".new-")
        with os.fdopen(fd, "w") as fh:
            fh.write(report.to_json())
        os.replace(scratch, self.directory / f"{report.started:017.6f}-{report.run_id}.json")
        waiting = self.waiting()
        for old in waiting[: max(0, len(waiting) - self.limit)]:
            try:
                carried = RunReport.from_json(old.read_text()).dropped_before
            except (OSError, ValueError):
                carried = 0
            old.unlink(missing_ok=True)
            self.count_dropped(1 + carried)

    def waiting(self) -> list[Path]:
        """Oldest first."""
        return sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []

    def count_dropped(self, n: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "dropped").write_text(str(self.dropped() + n))

    def dropped(self) -> int:
        try:
            return int((self.directory / "dropped").read_text())
        except (OSError, ValueError):
            return 0

    def clear_dropped(self) -> None:
        (self.directory / "dropped").unlink(missing_ok=True)
