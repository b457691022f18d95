"""`nxfarm health [--heal]` and `nxfarm restart`.

health exit codes: 0 all checks pass (skipped ones do not count), 1 something is wrong (after
--heal: something was still wrong when checked), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import checks, heal

HEALTH_EPILOG = """examples:
  nxfarm health                      table of checks; exit 1 if any fails
  nxfarm health --heal               also restart failed farm services (what the timer runs)
  nxfarm health --json               the same as JSON, for scripts"""


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heal", action="store_true", help="restart failed farm services through systemd")
    parser.add_argument("--cache-url", default=os.environ.get("NX_SELF_HOSTED_REMOTE_CACHE_SERVER"),
                        help="cache server to check (default: $NX_SELF_HOSTED_REMOTE_CACHE_SERVER)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def gather(cache_url: str | None) -> list[checks.Check]:
    found = [checks.tailnet_check(), checks.cache_check(cache_url)]
    return found + [checks.unit_check(unit, show) for unit, show in checks.installed_units().items()]


def render(found: list[checks.Check]) -> str:
    rows = [(c.name, "ok" if c.ok else "skip" if c.ok is None else "FAIL", c.detail, c.fix) for c in found]
    widths = [max(len(row[i]) for row in rows + [("CHECK", "STATE", "DETAIL", "FIX")]) for i in range(4)]
    lines = []
    for row in [("CHECK", "STATE", "DETAIL", "FIX"), *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def run_health(args: argparse.Namespace) -> int:
    found = gather(args.cache_url)
    if args.heal:
        units = [c for c in found if c.name in checks.FARM_UNITS]
        failed = [c.name for c in units if c.ok is False]
        boot, now = heal.clock()
        state = heal.HealState(heal.state_dir() / "nx-farm" / "heal.json", boot)
        for line in heal.heal([c.name for c in units if c.ok], failed, now, state):
            print(line, file=sys.stderr)
        if failed:
            time.sleep(2)  # let restarted services settle before the verdict
            found = gather(args.cache_url)
    if args.json:
        print(json.dumps([vars(c) for c in found], indent=2))
    else:
        print(render(found))
    return 1 if any(c.ok is False for c in found) else 0


RESTART_EPILOG = """examples:
  nxfarm restart                          every farm service on this host that is not disabled
  nxfarm restart nx-farm-agent.service    just the agent (what `just nx-start-agent` runs)
exit codes: 0 every unit active, 1 a unit did not come up or none is enabled, 2 not a farm unit"""


def add_restart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("units", nargs="*", help=f"default: every farm unit on this host ({', '.join(checks.FARM_UNITS)})")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for each unit to be active")


def run_restart(args: argparse.Namespace) -> int:
    """Restart through systemd (which stops the old process first), then wait until active:
    however often it runs, one process per service remains."""
    units = args.units
    if not units:
        units = []
        for unit, show in checks.installed_units().items():
            if checks.turned_off(show):
                print(f"{unit}: {show['UnitFileState']}, not restarted (name it to restart it anyway)")
            else:
                units.append(unit)
    unknown = [unit for unit in units if unit not in checks.FARM_UNITS]
    if unknown:
        print(f"nxfarm restart: not a farm unit: {', '.join(unknown)} (farm units: {', '.join(checks.FARM_UNITS)})",
              file=sys.stderr)
        return 2
    if not units:
        print("nxfarm restart: no enabled farm service on this host", file=sys.stderr)
        return 1
    worst = 0
    for unit in units:
        result = subprocess.run(["systemctl", "restart", unit], capture_output=True, text=True)
        deadline = time.monotonic() + args.timeout
        show = checks.systemctl_show(unit)
        while result.returncode == 0 and show.get("ActiveState") != "active" and time.monotonic() < deadline:
            time.sleep(0.5)
            show = checks.systemctl_show(unit)
        ok = result.returncode == 0 and show.get("ActiveState") == "active"
        heal.log(f"restart {unit}: {'active, pid ' + show.get('MainPID', '?') if ok else 'FAILED'}")
        print(f"{unit}: {'active (pid ' + show.get('MainPID', '?') + ')' if ok else 'FAILED: ' + (result.stderr.strip() or show.get('ActiveState', '?'))}")
        worst = worst or (0 if ok else 1)
    return worst
