"""The S3 backend next to the disk backend, one run: GET and PUT of 4 KiB, 1 MiB and 64 MiB bodies.

    .venv/bin/python bench/s3bench.py [--seconds 5] [--concurrency 4]

Starts a real Ceph RGW (tests/s3/rgw.sh, memstore: the store's own disk is RAM) and three
single-process servers without fsync on the same machine: `disk`, `s3+tier` (a 10 GiB local tier:
GETs after the first come from local disk) and `s3` (local tier size 0: every GET is fetched from
the bucket through a temporary file). Each cell runs `--concurrency` keep-alive clients for
`--seconds`; PUTs store new keys, GETs read keys stored beforehand. Prints req/s, MB/s and the
server's peak RSS growth over the cell (VmHWM after clear_refs), which stays flat when bodies
stream instead of being held in memory.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cache_server.server_proc import WRITE_TOKEN, CacheServer  # noqa: E402
from tests.s3.rgw import Rgw  # noqa: E402

SIZES = {"4KiB": 4096, "1MiB": 1 << 20, "64MiB": 64 << 20}


def rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_cell(server: CacheServer, method: str, size: int, keys: list[str], seconds: float, clients: int,
             body: bytes) -> tuple[float, float]:
    counter = itertools.count()
    done = [0] * clients
    stop = time.monotonic() + seconds
    errors: list[str] = []

    def client(slot: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        headers = {"Authorization": f"Bearer {WRITE_TOKEN}"}
        while time.monotonic() < stop:
            n = next(counter)
            if method == "PUT":
                conn.request("PUT", f"/v1/cache/p{size}x{n}x{os.getpid()}", body=body, headers=headers)
            else:
                conn.request("GET", f"/v1/cache/{keys[n % len(keys)]}", headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"{method} {response.status}")
                return
            done[slot] += 1

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{server.url}: {errors[:3]}")
    requests = sum(done)
    return requests / elapsed, requests * size / elapsed / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s3bench-"))
    rgw = Rgw(work / "rgw").start()
    servers: dict[str, CacheServer] = {}
    try:
        common = ("--no-fsync", "--access-log", "off", "--max-artifact-size", "100MiB", "--max-size", "20GiB")
        def s3(prefix: str) -> tuple[str, ...]:
            return ("--storage", f"s3://nxcache/{prefix}", "--s3-endpoint", rgw.endpoint, "--s3-timeout", "30")

        for name, extra in (("disk", ()), ("s3+tier", s3("tier")), ("s3", (*s3("none"), "--local-tier-size", "0"))):
            (work / name).mkdir()
            tier = ("--local-tier", str(work / name / "storage")) if extra else ()
            servers[name] = CacheServer(work / name, *common, *extra, *tier, env=rgw.env).start()
        rows = []
        for label, size in SIZES.items():
            body = os.urandom(size)
            for name, server in servers.items():
                keys = [f"g{size}x{name.replace('+', '')}x{n}" for n in range(4 if size > (1 << 20) else 32)]
                for key in keys:
                    assert server.request("PUT", key, body)[0] == 200
                for method in ("PUT", "GET"):
                    assert server.proc is not None
                    rss_reset(server.proc.pid)
                    before = rss_peak_kib(server.proc.pid)
                    rate, mbps = run_cell(server, method, size, keys, args.seconds, args.concurrency, body)
                    growth = rss_peak_kib(server.proc.pid) - before
                    rows.append((label, method, name, rate, mbps, growth / 1024))
                    print(f"  {label:>5} {method:<3} {name:<8} {rate:9.1f} req/s {mbps:8.1f} MB/s "
                          f"RSS +{growth / 1024:.1f} MiB", file=sys.stderr, flush=True)
        print(f"\n| size | op | backend | req/s | MB/s | peak RSS growth |\n|---|---|---|---:|---:|---:|")
        for label, method, name, rate, mbps, growth in rows:
            print(f"| {label} | {method} | {name} | {rate:.1f} | {mbps:.1f} | {growth:.1f} MiB |")
        print(f"\n{args.concurrency} clients, {args.seconds:g} s per cell; RGW memstore on this machine; "
              f"servers single-process, no fsync")
    finally:
        for server in servers.values():
            server.stop()
        rgw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
