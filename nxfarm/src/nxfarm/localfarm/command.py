"""`nxfarm farm up|down|env`: the demo's farm, kept running for your own Nx workspaces.

`up` starts a cache server, a scheduler and agents on 127.0.0.1 (each in its own session, so
they outlive this command), with a fresh private CA and tokens, in a state directory that keeps
the cache between runs. While it is up, `nxfarm build` and `nxfarm status` in any workspace on
this machine use it when the environment names no other farm; agents fetch commits straight
from the workspace's repository, so it needs commits but no remote. `env` prints the settings
as shell exports (for plain `npx nx` with the remote cache). `down` stops exactly the processes
`up` started.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .. import client
from .record import FarmRecord, farm_dir

EPILOG = """examples:
  nxfarm farm up                     cache, scheduler and 2 agents with 2 slots each
  nxfarm farm up --agents 1 --slots 4
  cd ~/src/my-workspace && git commit -am wip && nxfarm build -t build
  eval "$(nxfarm farm env)"          the same settings for plain `npx nx` (remote cache only)
  nxfarm farm down
state: $XDG_STATE_HOME/nx-farm/local-farm (default ~/.local/state/nx-farm/local-farm; --state)
exit codes: 0 done (also: already up / nothing to stop), 1 a process did not start, 2 `env` with no farm up"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="start the local farm (idempotent)")
    up.add_argument("--agents", type=int, default=2, help="agents to start (default 2)")
    up.add_argument("--slots", type=int, default=2, help="tasks each agent runs at once (default 2)")
    for name, text in (("down", "stop the local farm (keeps its cache and logs)"),
                       ("env", "print the local farm's settings as shell exports")):
        sub.add_parser(name, help=text)
    for action in sub.choices.values():
        action.add_argument("--state", type=Path, default=None,
                            help="state directory (default: ~/.local/state/nx-farm/local-farm)")


def _state(args: argparse.Namespace) -> Path:
    return (args.state or farm_dir(client.state_dir())).resolve()


def _say(line: str) -> None:
    print(f"nxfarm farm: {line}", flush=True)


def run(args: argparse.Namespace) -> int:
    state = _state(args)
    if args.action == "up":
        return up(state, args.agents, args.slots)
    if args.action == "down":
        return down(state)
    return env(state)


def _running_at(state: Path) -> FarmRecord | None:
    record = FarmRecord.read(state)
    return record if record is not None and "scheduler" in record.alive() else None


def up(state: Path, agents: int, slots: int) -> int:
    if agents < 1 or slots < 1:
        print("nxfarm farm up: --agents and --slots must be at least 1", file=sys.stderr)
        return 2
    already = _running_at(state)
    if already is not None:
        _say(f"already up: cache {already.cache_url}, scheduler {already.scheduler} ({state})")
        return 0
    stale = FarmRecord.read(state)
    if stale is not None:  # a farm that died or was killed: stop what is left of it first
        _stop(stale)
    from ..demo.farm import LocalFarm

    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    farm = LocalFarm(state, agents=agents)
    names = [f"agent-{n}" for n in range(1, agents + 1)]
    try:
        farm.start_cache()
        _say(f"cache server at {farm.cache_url} (storage {farm.storage}, kept between runs)")
        farm.start_scheduler()
        _say(f"scheduler at {farm.scheduler_address} (mutual TLS, CA in {state / 'tls'}); every build's run: "
             f"{farm.pages_url}")
        for name in names:
            farm.start_agent(name, slots=slots)
            _say(f"{name} up, {slots} slot(s)")
    except (RuntimeError, OSError) as exc:
        farm.stop()
        print(f"nxfarm farm up: {exc}\nlogs: {state}", file=sys.stderr)
        return 1
    processes = {"cache": farm.cache, "scheduler": farm.scheduler, **farm.agents}
    record = FarmRecord(state, farm.cache_url, farm.scheduler_address,
                        {name: process.proc.pid for name, process in processes.items() if process is not None},
                        {name: slots for name in names})
    settings = state / "client.env"
    settings.touch(mode=0o600)
    settings.write_text(client.render_env_file(
        farm.developer_env(), f"nx-farm local farm (nxfarm farm up); `source` it or: eval \"$(nxfarm farm env)\""))
    record.write()
    _say(f"up. In any Nx workspace on this machine (committed; no remote needed): nxfarm build -t build\n"
         f"  runs: {farm.pages_url}   status: nxfarm status   plain nx with this cache: eval \"$(nxfarm farm env)\"\n"
         f"  stop: nxfarm farm down\n"
         f"  logs: {state}/*.log")
    return 0


def _stop(record: FarmRecord, grace: float = 20.0) -> list[str]:
    """SIGTERM each of the farm's own process groups, then SIGKILL what is left after `grace`."""
    owned = record.alive()
    for pid in owned.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(record.owns(pid) for pid in owned.values()):
        time.sleep(0.1)
    for pid in owned.values():
        _signal_group(pid, signal.SIGKILL)  # and whatever a task left in the group
    record.remove()
    return sorted(owned)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def down(state: Path) -> int:
    record = FarmRecord.read(state)
    if record is None:
        _say(f"no local farm is up ({state})")
        return 0
    stopped = _stop(record)
    _say(f"stopped {', '.join(stopped) if stopped else 'nothing (it was no longer running)'}; "
         f"cache and logs kept in {state}")
    return 0


def env(state: Path) -> int:
    record = _running_at(state)
    if record is None:
        print(f"nxfarm farm env: no local farm is up ({state}): start one with `nxfarm farm up`", file=sys.stderr)
        return 2
    sys.stdout.write(record.client_env.read_text())
    return 0
