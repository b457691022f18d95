"""What a running local farm leaves on disk: which processes are its own, and its client settings.

`farm.json` names each process by PID; a PID counts as the farm's only while that process's
command line still names the farm's state directory, so a PID the kernel reused for something
else is never signalled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD = "farm.json"
CLIENT_ENV = "client.env"


@dataclass
class FarmRecord:
    state: Path
    cache_url: str
    scheduler: str
    pids: dict[str, int] = field(default_factory=dict)  # name -> PID (each leads its own session)
    slots: dict[str, int] = field(default_factory=dict)  # agent name -> slots

    @property
    def client_env(self) -> Path:
        return self.state / CLIENT_ENV

    def write(self) -> None:
        data = {**asdict(self), "state": str(self.state)}
        (self.state / RECORD).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def read(cls, state: Path) -> FarmRecord | None:
        try:
            data = json.loads((state / RECORD).read_text())
            return cls(Path(data["state"]), data["cache_url"], data["scheduler"], dict(data["pids"]),
                       dict(data.get("slots", {})))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def owns(self, pid: int) -> bool:
        """Is `pid` still a process this farm started (not a reused PID)?"""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        marker = os.fsencode(str(self.state))
        return any(marker in part for part in cmdline)

    def alive(self) -> dict[str, int]:
        return {name: pid for name, pid in self.pids.items() if self.owns(pid)}

    def remove(self) -> None:
        for name in (RECORD, CLIENT_ENV):
            (self.state / name).unlink(missing_ok=True)


def farm_dir(state_root: Path) -> Path:
    return state_root / "local-farm"


def running_farm(state_root: Path) -> FarmRecord | None:
    """The local farm under `state_root` if its scheduler still runs."""
    record = FarmRecord.read(farm_dir(state_root))
    if record is None or "scheduler" not in record.alive():
        return None
    return record
