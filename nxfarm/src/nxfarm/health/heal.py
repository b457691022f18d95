"""Restart what failed, through systemd, with backoff, logging each action.

A unit gets its first restart at once; if it fails again before it was seen healthy, the
next restart waits BASE_S, then twice that, up to MAX_S: a crashing service is not restarted
in a tight loop. The state lives next to the log, so consecutive timer runs share it.

Backoff is timed on CLOCK_BOOTTIME (seconds since boot, suspend included), not the wall clock:
a clock set back by NTP or by hand neither freezes restarts for the size of the jump nor lets
them loop. The state records the boot it was written in; after a reboot it starts afresh.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BASE_S = 60.0
MAX_S = 3600.0


def state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


def log_path() -> Path:
    return state_dir() / "nx-agent.log"  # the seed's path


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def clock() -> tuple[str, float]:
    """(this boot's id, seconds since it): what backoff is measured in."""
    try:
        boot = BOOT_ID.read_text().strip()
    except OSError:
        boot = ""
    return boot, time.clock_gettime(time.CLOCK_BOOTTIME)


def log(message: str, wall: float | None = None) -> None:
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.fromtimestamp(time.time() if wall is None else wall,
                                            datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with path.open("a") as handle:
        handle.write(f"{stamp} nxfarm health: {message}\n")


@dataclass
class Attempts:
    count: int = 0
    last: float = 0.0


def wait_needed(attempts: Attempts, now: float) -> float:
    """Seconds before this unit may be restarted again (0 = now)."""
    if attempts.count == 0:
        return 0.0
    delay = min(BASE_S * 2 ** (attempts.count - 1), MAX_S)
    return max(0.0, attempts.last + delay - now)


class HealState:
    def __init__(self, path: Path, boot: str) -> None:
        """Attempts recorded in boot `boot`; those of another boot (or an older file) are dropped."""
        self.path, self.boot = path, boot
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raw = {}
        units = raw.get("units") if isinstance(raw, dict) and raw.get("boot") == boot else None
        self.units = {unit: Attempts(**value) for unit, value in (units or {}).items() if isinstance(value, dict)}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"boot": self.boot, "units": {unit: vars(a) for unit, a in self.units.items()}}))
        os.replace(tmp, self.path)


def heal(healthy: list[str], failed: list[str], now: float, state: HealState) -> list[str]:
    """Restart each failed unit whose backoff allows it; returns one line per decision.
    `now`: seconds since boot (`clock()`), in the boot `state` belongs to."""
    lines = []
    for unit in healthy:
        if unit in state.units:
            del state.units[unit]  # seen healthy: the next failure starts a fresh backoff
    for unit in failed:
        attempts = state.units.setdefault(unit, Attempts())
        wait = wait_needed(attempts, now)
        if wait > 0:
            line = f"{unit} still down; next restart in {wait:.0f}s (attempt {attempts.count + 1}, backoff)"
        else:
            result = subprocess.run(["systemctl", "restart", unit], capture_output=True, text=True)
            attempts.count += 1
            attempts.last = now
            outcome = "ok" if result.returncode == 0 else f"failed: {result.stderr.strip()}"
            line = f"restarted {unit} (attempt {attempts.count}): {outcome}"
        log(line)
        lines.append(line)
    state.save()
    return lines
