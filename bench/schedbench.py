"""Scheduling from history against today's name order, side by side, on a graph with skewed
durations: `--quick` quick independent tasks (`a-*`, 1 s) and one long chain (`z-1` -> `z-2` ->
`z-3`, 6 s each) on 2 one-slot agents (real cache server, scheduler, agents and Nx on 127.0.0.1).

    .venv/bin/python bench/schedbench.py [--pairs 2] [--quick 10] [--quick-ms 1000] [--long-ms 6000]

In name order the quick tasks go first and the chain waits for them; with history the chain
starts at once on one agent while the other runs the quick tasks. One learning build first
fills the run store (and the agents' checkouts); then `--pairs` pairs of measured builds,
each on a new commit (nothing restored), in alternating order. Prints each wall time and the
medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.nxfarm.farm_procs import LocalFarm  # noqa: E402
from tests.nxfarm.farm_workspace import FarmWorkspace  # noqa: E402

CHAIN = ["z-1", "z-2", "z-3"]


def quick(n: int) -> list[str]:
    return [f"a-{i:02d}" for i in range(1, n + 1)]


def projects(n_quick: int) -> dict[str, tuple[str, list[str]]]:
    out = {name: (f"libs/{name}", []) for name in quick(n_quick)}
    for i, name in enumerate(CHAIN):
        out[name] = (f"libs/{name}", [CHAIN[i - 1]] if i else [])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--quick", type=int, default=10, help="how many quick tasks (default 10)")
    parser.add_argument("--quick-ms", type=int, default=1000)
    parser.add_argument("--long-ms", type=int, default=6000)
    parser.add_argument("--keep", type=Path, default=None, help="keep the farm (its run store) in this new directory")
    args = parser.parse_args()
    delays = {**{name: args.quick_ms for name in quick(args.quick)}, **{name: args.long_ms for name in CHAIN}}
    walls: dict[str, list[float]] = {"name": [], "history": []}
    with tempfile.TemporaryDirectory(prefix="schedbench-") as tmp:
        base = args.keep or Path(tmp)
        farm = LocalFarm(base / "farm")
        try:
            farm.start_cache()
            farm.start_scheduler()
            for n in (1, 2):
                farm.start_agent(f"agent-{n}", slots=1)
            workspace = FarmWorkspace(base / "ws", base / "origin.git", "learn", delays, projects(args.quick))
            learn = farm.build(workspace.root, timeout=1800)
            assert learn.returncode == 0, learn.stdout + learn.stderr
            for pair in range(args.pairs):
                for order in (("name", "history") if pair % 2 == 0 else ("history", "name")):
                    workspace.new_commit(f"{order}-{pair}")
                    workspace.clear_outputs()
                    start = time.monotonic()
                    result = farm.build(workspace.root, "--order", order, timeout=1800)
                    wall = time.monotonic() - start
                    assert result.returncode == 0, result.stdout + result.stderr
                    assert "0 executed here" in result.stdout, result.stdout
                    walls[order].append(wall)
                    print(f"pair {pair + 1}: {order:<7} {wall:6.1f} s", flush=True)
        finally:
            farm.stop()
    name, history = statistics.median(walls["name"]), statistics.median(walls["history"])
    work = args.quick * args.quick_ms / 1000 + len(CHAIN) * args.long_ms / 1000
    print()
    print(f"{args.quick} tasks x {args.quick_ms / 1000:g} s + a chain of {len(CHAIN)} x {args.long_ms / 1000:g} s, "
          f"2 agents x 1 slot (work {work:g} s, chain {len(CHAIN) * args.long_ms / 1000:g} s)")
    print(f"{'order':<8} {'median wall s':>13}  runs")
    for order, values in walls.items():
        print(f"{order:<8} {statistics.median(values):>13.1f}  {', '.join(f'{v:.1f}' for v in values)}")
    print(f"history is {100 * (1 - history / name):.0f}% faster than name order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
