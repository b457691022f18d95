"""Distributed-build benchmark: 16 Nx tasks that each sleep 2 s, with dependencies, built by
`nxfarm build` on 1, 2 and 4 one-slot agents (separate processes on 127.0.0.1, with the real
cache server and scheduler), against the bound no scheduler can beat:
max(critical path, total work / slots). Also the per-task overhead: an agent's time for one
task against a bare `nx run` of the same task on this machine.

    .venv/bin/python bench/farmbench.py [--workers 1 2 4] [--sleep-ms 2000]

Each worker count gets a fresh farm; a warm-up build (another commit) first fills the agents'
checkouts and node_modules, as on a farm that has built before.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.nx_client.workspace import NX_BIN  # noqa: E402
from tests.nxfarm.farm_procs import LocalFarm, clean_env  # noqa: E402
from tests.nxfarm.farm_workspace import FarmWorkspace  # noqa: E402

# 16 tasks in 5 levels (1, 5, 5, 4, 1): critical path 5 tasks.
LEVELS = [1, 5, 5, 4, 1]


def projects() -> dict[str, tuple[str, list[str]]]:
    out: dict[str, tuple[str, list[str]]] = {}
    previous: list[str] = []
    for depth, width in enumerate(LEVELS):
        current = [f"p{depth}-{i}" for i in range(width)]
        for i, name in enumerate(current):
            deps = previous if len(previous) <= 2 else [previous[i % len(previous)], previous[(i + 1) % len(previous)]]
            out[name] = (f"libs/{name}", list(deps))
        previous = current
    return out


def bound(slots: int, sleep_s: float) -> float:
    return max(len(LEVELS) * sleep_s, sum(LEVELS) * sleep_s / slots)


def level_bound(slots: int, sleep_s: float) -> float:
    """What level-by-level list scheduling achieves: each level in ceil(width / slots) rounds."""
    return sum(-(-width // slots) for width in LEVELS) * sleep_s


def agent_seconds(output: str) -> list[float]:
    return [float(m) for m in re.findall(r"\] done (?:\S+) on agent-\d+ \((\d+\.\d+)s", output)]


def bare_nx_run(base: Path, sleep_ms: int) -> float:
    """Wall time of `nx run` of one root task that executes (no cache), in a plain clone."""
    workspace = FarmWorkspace(base / "bare", base / "bare-origin.git", "bare", {"*": sleep_ms}, projects())
    times = []
    for attempt in range(3):
        start = time.monotonic()
        result = subprocess.run(["node", str(NX_BIN), "run", "p0-0:build", "--skip-nx-cache"], cwd=workspace.root,
                                env=clean_env(base / "bare-home"), capture_output=True, text=True)
        times.append(time.monotonic() - start)
        assert result.returncode == 0, result.stdout + result.stderr
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sleep-ms", type=int, default=2000)
    args = parser.parse_args()
    sleep_s = args.sleep_ms / 1000
    rows = []
    with tempfile.TemporaryDirectory(prefix="farmbench-") as tmp:
        base = Path(tmp)
        bare = bare_nx_run(base, args.sleep_ms)
        print(f"bare `nx run` of one {sleep_s:g} s task here: {bare:.2f} s (Nx start-up {bare - sleep_s:.2f} s)",
              flush=True)
        for workers in args.workers:
            farm = LocalFarm(base / f"farm-{workers}")
            try:
                farm.start_cache()
                farm.start_scheduler()
                for n in range(1, workers + 1):
                    farm.start_agent(f"agent-{n}", slots=1)
                workspace = FarmWorkspace(base / f"ws-{workers}", base / f"origin-{workers}.git", "warm",
                                          {"*": args.sleep_ms}, projects())
                warm = farm.build(workspace.root, timeout=1800)
                assert warm.returncode == 0, warm.stdout + warm.stderr
                workspace.new_commit("measured")
                workspace.clear_outputs()
                start = time.monotonic()
                result = farm.build(workspace.root, timeout=1800)
                wall = time.monotonic() - start
                assert result.returncode == 0, result.stdout + result.stderr
                assert "final pass: 16/16 task(s) restored from cache, 0 executed here" in result.stdout, result.stdout
                per_task = statistics.median(agent_seconds(result.stdout))
                rows.append((workers, wall, bound(workers, sleep_s), level_bound(workers, sleep_s), per_task))
                print(f"{workers} worker(s): {wall:.1f} s", flush=True)
            finally:
                farm.stop()
    print()
    print(f"16 tasks x {sleep_s:g} s, levels {LEVELS}; one slot per agent; bare nx run = {bare:.2f} s")
    print(f"{'workers':>7}  {'wall s':>7}  {'bound s':>7}  {'x bound':>7}  {'level-sched s':>13}  "
          f"{'agent s/task':>12}  {'overhead s/task':>15}")
    for workers, wall, lower, levels, per_task in rows:
        print(f"{workers:>7}  {wall:>7.1f}  {lower:>7.1f}  {wall / lower:>7.2f}  {levels:>13.1f}  {per_task:>12.2f}  "
              f"{per_task - bare:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
