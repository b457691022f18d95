#!/usr/bin/env python3
"""A/B of two revisions of the cache server under the same 4 KiB wrk load, runs alternating.

    python bench/abtest.py A B [--op PUT|GET|MISS] [--conc 32] [--seconds 3] [--pairs 3] \
        [--flags "--workers 1 --no-fsync"] [--storage-in DIR]

A and B are git revisions (HEAD, a commit, a tag), WORKTREE for the files as they are on
disk, or a directory holding a `cache_server` package. Each is exported into a temporary directory
and run as `python -m cache_server` with
that directory first on PYTHONPATH; dependencies come from the environment running this
script. Every run gets a fresh server on fresh storage (a tmpfs when /dev/shm exists, or a new
directory in --storage-in: the filesystem a cache host would use tells more about PUT), then
`wrk -t1` with cachebench.py's script; the order within each pair alternates so that a drift
of the host does not favour one side. Prints each run and the medians: req/s and server CPU
microseconds per request (utime + stime of the server processes, the steadier figure on a
shared host). Everything listens on 127.0.0.1 and every run is bounded by time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import cachebench as cb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--op", choices=["GET", "PUT", "MISS"], default="PUT")
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--flags", default="--workers 1 --no-fsync", help="cache server flags for both sides")
    parser.add_argument("--storage-in", type=cb.existing_directory,
                        help="make each run's storage in this directory, not on a tmpfs")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("abtest: wrk is required (apt-get install -y wrk)", file=sys.stderr)
        return 2
    flags = shlex.split(args.flags)
    scratch = Path(tempfile.mkdtemp(prefix="nxcache-ab-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        trees = {label: cb.export(rev, scratch / label) for label, rev in (("A", args.a), ("B", args.b))}
        body = scratch / "body"
        body.write_bytes(os.urandom(cb.SIZES["4k"]))
        script = scratch / "bench.lua"
        script.write_text(cb.WRK_SCRIPT)
        results: dict[str, list[cb.Cell]] = {"A": [], "B": []}
        for pair in range(args.pairs):
            for label in ("A", "B") if pair % 2 == 0 else ("B", "A"):
                base = Path(tempfile.mkdtemp(prefix=f"run-{pair}-{label}-", dir=args.storage_in or scratch))
                server = cb.start_nxcache(base, f"nxcache-{label}", flags, sources=trees[label])
                try:
                    if args.op == "GET":
                        cb.preload(server, "4k", body.read_bytes(), "k")
                    cell = cb.run_cell(server, args.op, "4k", args.conc, args.seconds, body,
                                       "k" if args.op == "GET" else f"{args.op.lower()}{pair}", script)
                finally:
                    server.stop()
                    shutil.rmtree(base, ignore_errors=True)
                results[label].append(cell)
                print(f"pair {pair + 1} {label} {args.op} c{args.conc}: {cell.rps:9,.0f} req/s  "
                      f"{cell.cpu_us_per_request or float('nan'):6.1f} us/req  errors {cell.errors}", flush=True)
        print()
        for label, rev in (("A", args.a), ("B", args.b)):
            cells = results[label]
            print(f"{label} = {rev}: median {statistics.median(c.rps for c in cells):,.0f} req/s, "
                  f"{statistics.median(c.cpu_us_per_request or float('nan') for c in cells):.1f} us/req "
                  f"(flags: {args.flags}{'' if args.storage_in is None else f'; storage in {args.storage_in}'})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
