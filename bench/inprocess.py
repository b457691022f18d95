#!/usr/bin/env python3
"""What one small request costs inside the server process, next to bench/floor.py, without sockets.

    python bench/inprocess.py [--ops GET,MISS,PUT] [--requests 20000] [--runs 5] [--tokens 1] [--opcodes]

Requests are whole byte strings fed to the server's `Connection.data_received` (and to
py-floor's protocol) with a transport that drops what is written, so the figures are the
Python and storage work of a request: no loop, no socket syscalls. PUT writes real files
(a tmpfs when /dev/shm exists). GET hits 2,000 preloaded 4 KiB entries, as cachebench does.
Prints the best of --runs for each, with user and system CPU of that run. Without the loop
and sockets a change to the request path shows directly; use cachebench.py or abtest.py to
see what reaches the wire.

--opcodes counts the Python opcodes each request executes (sys.settrace) instead of timing it.
The count is steady from run to run (only the Date header, made again when the second turns,
depends on the clock), so a change to the request path shows even on a host whose timings
wander by a fifth from one run to the next.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
# Appended, so that a package on PYTHONPATH (another revision, as abtest.py runs) comes first.
sys.path.append(str(HERE.parent / "cache_server" / "src"))
sys.path.insert(0, str(HERE))

import floor  # noqa: E402
from cache_server.accesslog import AccessLog  # noqa: E402
from cache_server.auth import Scope, TokenStore, token_line  # noqa: E402
from cache_server.http.handler import CacheHandler  # noqa: E402
from cache_server.http.connections import HttpServer  # noqa: E402
from cache_server.metrics import Metrics  # noqa: E402
from cache_server.storage.disk import DiskStorage  # noqa: E402

TOKEN = "inprocess-token-0123456789"
PRELOAD = 2000
BODY = os.urandom(4096)


class DroppingTransport:
    """Drops what is written; counts the status codes that start a write (py-floor writes one answer each)."""

    def __init__(self) -> None:
        self.statuses: dict[bytes, int] = {}

    def write(self, data: bytes) -> None:
        status = data[9:12]
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def request(method: str, key: str, body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if method == "PUT" else ""
    return (f"{method} /v1/cache/{key} HTTP/1.1\r\nHost: 127.0.0.1:3333\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/octet-stream\r\n{length}\r\n").encode() + body


def requests_for(op: str, run: int, count: int) -> list[bytes]:
    if op == "PUT":
        return [request("PUT", f"r{run}x{i}", BODY) for i in range(count)]
    if op == "GET":
        return [request("GET", f"pre{i % PRELOAD}") for i in range(count)]
    return [request("GET", f"absent{i}") for i in range(count)]


def require_outcomes(outcomes: Callable[[], dict[str, int]], op: str, expected: int) -> None:
    """Stop unless `op`'s outcomes (hits, misses, stores) reached `expected`: else the figures
    would describe some other request than the one named."""
    if outcomes()[op] != expected:
        raise SystemExit(f"inprocess: {op}: {outcomes()[op]} outcomes counted, expected {expected}")


def measure(feed: Callable[[bytes], None], outcomes: Callable[[], dict[str, int]], op: str, count: int,
            runs: int) -> tuple[float, float, float]:
    """(wall, user, sys) microseconds per request of the fastest run; every request must have had
    the outcome `op` names (a hit, a miss, a store), or the figures would time something else."""
    best = (float("inf"), 0.0, 0.0)
    expected = outcomes()[op] + count * runs
    for run in range(runs):
        reqs = requests_for(op, run, count)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for raw in reqs:
            feed(raw)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        if wall < best[0]:
            best = (wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)
    require_outcomes(outcomes, op, expected)
    return best[0] * 1e6 / count, best[1] * 1e6 / count, best[2] * 1e6 / count


def count_opcodes(feed: Callable[[bytes], None], outcomes: Callable[[], dict[str, int]], op: str,
                  count: int) -> float:
    """Python opcodes per request, over `count` requests that each had the outcome `op` names."""
    executed = 0

    def trace(frame: FrameType, event: str, arg: object) -> Callable[..., object]:
        nonlocal executed
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            executed += 1
        return trace

    expected = outcomes()[op] + count
    reqs = requests_for(op, 0, count)
    sys.settrace(trace)
    try:
        for raw in reqs:
            feed(raw)
    finally:
        sys.settrace(None)
    require_outcomes(outcomes, op, expected)
    return executed / count


def nxcache_feeder(base: Path, tokens: int) -> tuple[Callable[[bytes], None], Callable[[], dict[str, int]]]:
    others = "".join(token_line(f"agent{i}", Scope.READWRITE, f"other-token-{i}") for i in range(tokens - 1))
    (base / "tokens").write_text(others + token_line("bench", Scope.READWRITE, TOKEN))
    storage = DiskStorage(str(base / "nxcache"), max_bytes=8 << 30, max_artifact_bytes=1 << 30, min_free_bytes=0,
                          fsync=False, memory_cache_bytes=64 << 20)
    handler = CacheHandler(storage=storage, tokens=TokenStore(str(base / "tokens")), metrics=Metrics(storage),
                           access_log=AccessLog(str(base / "access.log")))
    server = HttpServer(handler, idle_timeout=75, body_timeout=30)
    conn, _idle = server(), server()  # two open connections: answers are held, as under load
    conn.connection_made(DroppingTransport())  # type: ignore[arg-type]
    _idle.connection_made(DroppingTransport())  # type: ignore[arg-type]

    def feed(raw: bytes) -> None:
        conn.data_received(raw)
        server.write_held()  # the end of a loop pass

    metrics = handler.metrics
    return feed, lambda: {"GET": metrics.hits, "MISS": metrics.misses, "PUT": metrics.puts}


def floor_feeder(base: Path) -> tuple[Callable[[bytes], None], Callable[[], dict[str, int]]]:
    store = base / "py-floor"
    for sub in ("tmp", "e"):
        (store / sub).mkdir(parents=True)
    proto = floor.Floor(str(store), f"Bearer {TOKEN}".encode(), {}, set())
    transport = DroppingTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    index = proto.index
    return proto.data_received, lambda: {"GET": transport.statuses.get(b"200", 0) - len(index),
                                         "MISS": transport.statuses.get(b"404", 0), "PUT": len(index)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="GET,MISS,PUT")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1, help="tokens in the server's file (one is used)")
    parser.add_argument("--opcodes", action="store_true", help="count Python opcodes per request instead of timing")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nxcache-inprocess-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        feeders = {"nxcache": nxcache_feeder(base, args.tokens), "py-floor": floor_feeder(base)}
        for feed, _ in feeders.values():
            for i in range(PRELOAD):
                feed(request("PUT", f"pre{i}", BODY))
        if args.opcodes:
            print(f"Python opcodes per 4 KiB request, over {args.requests:,} requests "
                  f"({args.tokens} token(s) in the server's file)")
            print("| op | nxcache | py-floor | ratio |")
            print("|---|---|---|---|")
            for op in args.ops.split(","):
                ours_count = count_opcodes(*feeders["nxcache"], op, args.requests)
                bare_count = count_opcodes(*feeders["py-floor"], op, args.requests)
                print(f"| {op} | {ours_count:.0f} | {bare_count:.0f} | {ours_count / bare_count:.1f}x |", flush=True)
            return 0
        print(f"microseconds per 4 KiB request, best of {args.runs} runs of {args.requests:,} "
              f"({args.tokens} token(s) in the server's file)")
        print("| op | nxcache | nxcache user / sys | py-floor | py-floor user / sys | ratio |")
        print("|---|---|---|---|---|---|")
        for op in args.ops.split(","):
            ours = measure(*feeders["nxcache"], op, args.requests, args.runs)
            bare = measure(*feeders["py-floor"], op, args.requests, args.runs)
            print(f"| {op} | {ours[0]:.2f} | {ours[1]:.1f} / {ours[2]:.1f} | {bare[0]:.2f} | {bare[1]:.1f} / {bare[2]:.1f}"
                  f" | {ours[0] / bare[0]:.1f}x |", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(main()))
