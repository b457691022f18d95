"""`nxfarm demo`: start a farm on this machine, build a sample workspace on it twice, stop it.

A cache server, a scheduler and two agents run as local processes on 127.0.0.1 with a
generated token and a fresh CA under a temporary state directory. Build 1 runs `nxfarm
build` (tasks on the agents, then the final pass here); build 2 is a second developer: a
fresh clone with its own home builds with the remote cache only, and everything comes from
the cache. Everything started is stopped on exit or Ctrl-C, and the state removed unless
--keep. Needs git, Node.js with npm, and the cache server package (`nxfarm-cache-server`).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..build.report import parse_final_table
from .farm import NXFARM, LocalFarm
from .workspace import FarmWorkspace


EPILOG = """examples:
  nxfarm demo                 everything in a temporary directory, removed at the end
  nxfarm demo --keep          keep the state directory (logs, cache, workspace) to look around
exit codes: 0 both builds passed, 1 a step failed (state kept), 2 missing git/node/npm/cache server, 130 Ctrl-C"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=Path, help="state directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the state directory (logs, cache, workspace)")
    parser.add_argument("--node-modules", type=Path, help=argparse.SUPPRESS)  # tests: link an installed Nx


def _say(line: str) -> None:
    print(f"demo: {line}", flush=True)


def _build(farm: LocalFarm, workspace: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    process = subprocess.Popen([NXFARM, "build", "-t", "build", "--yes", *args], cwd=workspace, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("nxfarm:") or line.startswith(("TASK", "----")) or ":build" in line[:20]:
            sys.stdout.write("  " + line)  # our lines and the table; Nx's own output stays in the log
        lines.append(line)
    sys.stdout.flush()
    return process.wait(), "".join(lines)


def run(args: argparse.Namespace) -> int:
    for tool in ("git", "node", "npm"):
        if shutil.which(tool) is None:
            print(f"nxfarm demo: {tool} is not installed; the demo builds a real Nx workspace and needs git, "
                  "Node.js and npm", file=sys.stderr)
            return 2
    try:
        import cache_server  # noqa: F401
    except ImportError:
        print("nxfarm demo: the cache server package is not installed (pip install ./cache_server)", file=sys.stderr)
        return 2
    state = args.state or Path(tempfile.mkdtemp(prefix="nxfarm-demo-"))
    farm = LocalFarm(state, agents=2)
    started = time.monotonic()
    try:
        _say(f"state in {state}")
        farm.start_cache()
        _say(f"cache server at {farm.cache_url} (token generated, hash only on disk)")
        farm.start_scheduler()
        _say(f"scheduler at {farm.scheduler_address} (mutual TLS, CA made for this demo)")
        for name in ("agent-1", "agent-2"):
            farm.start_agent(name, slots=2)
        _say("agents agent-1 and agent-2 up, 2 slots each")
        _say("sample workspace: 9 projects with diamond dependencies (installing nx with npm ci)")
        workspace = FarmWorkspace(state / "workspace", state / "origin.git", "demo", node_modules=args.node_modules)

        _say("build 1: nxfarm build -t build (tasks on the agents, then the final pass here)")
        code, output = _build(farm, workspace.root, farm.orchestrator_env())
        if code != 0:
            _say(f"build 1 failed (exit {code}); logs are in {state}")
            args.keep = True
            return code
        rows = parse_final_table(output)
        where = collections.Counter(row["RAN ON"] for row in rows)

        _say("build 2: a second developer (fresh clone, own home) builds with the remote cache only")
        clone = state / "second-developer"
        subprocess.run(["git", "clone", "--quiet", "--branch", "main", str(workspace.origin), str(clone)], check=True)
        (clone / "node_modules").symlink_to((workspace.root / "node_modules").resolve())
        code, output = _build(farm, clone, farm.orchestrator_env(home=state / "second-home"), "--local")
        if code != 0:
            _say(f"build 2 failed (exit {code}); logs are in {state}")
            args.keep = True
            return code
        second = parse_final_table(output)
        hits = sum(1 for row in second if row["FINAL PASS"] == "remote cache")
        _say("where build 1 ran its tasks: " + ", ".join(f"{name} {count}" for name, count in sorted(where.items())))
        _say(f"build 2 cache hit rate: {hits}/{len(second)} from the remote cache "
             f"({100 * hits // max(len(second), 1)}%)")
        _say(f"done in {time.monotonic() - started:.0f}s")
        _say("next, your own workspace on a farm that stays up: make install, then nxfarm farm up, then "
             "nxfarm build -t build in it (README: \"Your own workspace on a farm on this machine\")")
        return 0
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        _say(f"failed: {exc}")
        args.keep = True
        return 1
    finally:
        farm.stop()
        _say("farm stopped")
        if args.keep:
            _say(f"state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
