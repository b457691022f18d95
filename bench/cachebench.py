#!/usr/bin/env python3
"""Throughput, p99, CPU per GB and RSS growth of the cache server next to nginx, in one interleaved run.

Load comes from wrk (Debian package) with one client thread, so the client costs the
same for every server. Storage is a tmpfs (when root can mount one) so the HTTP stacks
are compared, not the disk, as in research/perf.md. Everything listens on 127.0.0.1 and
every phase is bounded by time.

    python bench/cachebench.py [--reps 3] [--seconds 3] [--sizes 4k,1m,64m] [--conc 1,8,32] \
        [--storage-in DIR]

--storage-in puts every server's storage (nginx's too) in a new directory under DIR instead:
on a tmpfs fsync does nothing, so only a disk shows what the deployed fsync costs.
--baseline REV runs each nxcache server a second time from REV's sources (NAME@base), in the
same shuffled order, and ends with a table of every cell against it: the regression guard.

Servers: `nginx` (1 worker, sendfile GET, WebDAV PUT, bearer check and 409-on-exists),
`nxcache` (our server as deployed: fsync on, access log on, one worker process per core, uvloop)
and `nxcache-nofsync`; `nxcache-1proc` and `nxcache-1proc-nofsync` run a single process,
`nxcache-asyncio` runs as deployed on the standard library's event loop, and `py-floor`
(bench/floor.py, 4 KiB cells only) is the bare Python stack underneath: parse, token, file
and answer, nothing else; `py-floor-2proc` is that in two processes on one port, as `nxcache`
runs one worker per core (--servers).
4 KiB also gets MISS cells (GETs of absent keys, 404 expected), like perf.md's get_miss column.
For each rep and each size, fresh servers get the same preloaded entries; then every
(operation, concurrency) cell runs each server in a freshly shuffled order.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = "bench-" + secrets.token_hex(8)
SIZES = {"4k": 4 << 10, "1m": 1 << 20, "64m": 64 << 20}
PRELOAD = {"4k": 2000, "1m": 200, "64m": 12}
TMPFS_GIB = 12

# research/perf.md: the Go peer (enxtur/nx-caching-server) as a ratio to nginx per cell, and its
# server CPU seconds per GB. (size, C) -> (PUT ratio, GET ratio). 4 KiB cells are measured with wrk
# here, so they take perf.md's wrk table where it has the cell (GET c1 0.73, GET c32 0.61, PUT c32
# 1.18); the rest come from its main matrix, whose Python client held every server near 14k req/s.
GO_RATIO = {
    ("4k", 1): (0.92, 0.73), ("4k", 8): (0.97, 0.95), ("4k", 32): (1.18, 0.61),
    ("1m", 1): (0.87, 1.20), ("1m", 8): (0.77, 0.84), ("1m", 32): (0.98, 1.07),
    ("64m", 1): (0.66, 0.72), ("64m", 8): (0.98, 0.83), ("64m", 32): (1.16, 0.83),
}
GO_CPU_PER_GB = {  # (size, C) -> (PUT, GET)
    ("1m", 1): (0.60, 0.36), ("1m", 8): (0.56, 0.37), ("1m", 32): (0.60, 0.37),
    ("64m", 1): (0.69, 0.37), ("64m", 8): (0.66, 0.21), ("64m", 32): (0.66, 0.20),
}
GO_GEOMEAN = {"PUT": 0.88, "GET": 0.92}
GO_MISS_RATIO = {("4k", 32): 0.92}  # perf.md's wrk table, get_miss c32
GO_US_PER_REQUEST = {("GET", 1): 51, ("GET", 32): 28, ("MISS", 32): 16, ("PUT", 32): 30}  # same table, 4 KiB

# As deployed (components/render/cache_host.py): fsync on, one worker process per core.
NXCACHE_FLAGS = {
    "nxcache": ["--workers", "auto"],
    "nxcache-nofsync": ["--workers", "auto", "--no-fsync"],
    "nxcache-1proc": ["--workers", "1"],
    "nxcache-1proc-nofsync": ["--workers", "1", "--no-fsync"],
    "nxcache-asyncio": ["--workers", "auto", "--event-loop", "asyncio"],
}

NGINX_CONF = """
worker_processes 1;
user nobody nogroup;
daemon off;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {run}/nginx-access.log;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 3g;
    client_body_buffer_size 128k;
    client_body_temp_path {store}/.tmp;
    server {{
        listen 127.0.0.1:{port};
        root {store};
        location /v1/cache/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            dav_methods PUT;
            create_full_put_path on;
            default_type application/octet-stream;
        }}
    }}
}}
"""

WRK_SCRIPT = r"""
local method = os.getenv("BENCH_METHOD")
local prefix = os.getenv("BENCH_PREFIX")
local nkeys = tonumber(os.getenv("BENCH_NKEYS"))
local headers = { ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"), ["Content-Type"] = "application/octet-stream" }
local body = nil
local counter = 0
if method == "PUT" then
  local f = io.open(os.getenv("BENCH_BODY"), "rb")
  body = f:read("*a")
  f:close()
end
request = function()
  counter = counter + 1
  local key
  if method == "PUT" then key = prefix .. counter else key = prefix .. (counter % nkeys) end
  return wrk.format(method, "/v1/cache/" .. key, headers, body)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    store: Path

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(c) for c in children] or [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def existing_directory(text: str) -> Path:
    """argparse type of --storage-in (here and in abtest.py): a directory that exists, else exit 2 naming it."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return path


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], failure: str) -> None:
    """Poll `ready` for up to 20 s while the server `proc` runs; raise `failure` if it never is."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(failure)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: listening(port), proc, f"nothing listening on {port}")


def start_nginx(base: Path) -> Server:
    store = base / "nginx"
    (store / ".tmp").mkdir(parents=True)
    (store / "v1" / "cache").mkdir(parents=True)
    port = free_port()
    for path in (store, store / ".tmp", store / "v1", store / "v1" / "cache"):
        shutil.chown(path, "nobody", "nogroup")  # the worker drops to nobody
    conf = base / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=base, store=store, port=port, token=TOKEN))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(base)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return Server("nginx", port, proc, store)


def start_nxcache(base: Path, name: str, extra: list[str], sources: Path | None = None) -> Server:
    """`sources`: a directory holding another revision's `cache_server` package, run instead (abtest.py)."""
    store = base / name
    tokens = base / f"{name}.tokens"
    sys.path.insert(0, str(ROOT / "cache_server" / "src"))
    from cache_server.auth import Scope, token_line

    tokens.write_text(token_line("bench", Scope.READWRITE, TOKEN))
    port = free_port()
    cmd = [sys.executable, "-m", "cache_server", "--bind", f"127.0.0.1:{port}", "--storage", str(store),
           "--tokens", str(tokens), "--max-size", "3GiB", "--min-free-disk", "0",
           "--access-log", str(base / f"{name}-access.log"), *extra]
    env = None if sources is None else {**os.environ, "PYTHONPATH": str(sources)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(base / f"{name}.err", "wb"))
    wait_port(port, proc)
    server = Server(name, port, proc, store)
    wait_workers(server, expected_workers(extra))
    return server


def expected_workers(flags: list[str]) -> int:
    """How many worker processes the cache server starts with these flags (1: it serves itself)."""
    from cache_server.config import parse_workers

    value = flags[flags.index("--workers") + 1] if "--workers" in flags else "1"  # the flag's default
    return parse_workers(value)


def wait_workers(server: Server, expected: int) -> None:
    """The listening socket is bound before the workers fork, so the port answers before they all
    run: a cell measured then would leave the CPU of the missing ones out."""
    if expected > 1:  # a lone server is listed as its own worker
        wait_until(lambda: len(server.worker_pids()) >= expected, server.proc,
                   f"{server.name}: {expected} workers did not start")


FLOOR_PROCESSES = {"py-floor": 1, "py-floor-2proc": 2}


def start_floor(base: Path, name: str) -> Server:
    """bench/floor.py: what uvloop + httptools cost with none of the cache server's own work."""
    store = base / name
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "floor.py"), "--port", str(port), "--storage", str(store),
                             "--token", TOKEN, "--processes", str(FLOOR_PROCESSES[name])],
                            stdout=subprocess.DEVNULL, stderr=open(base / f"{name}.err", "wb"))
    wait_port(port, proc)
    return Server(name, port, proc, store)


def preload(server: Server, size_name: str, body: bytes, prefix: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for i in range(PRELOAD[size_name]):
        conn.request("PUT", f"/v1/cache/{prefix}{i}", body=body, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        response.read()
        if response.status not in (200, 201, 204):
            raise RuntimeError(f"{server.name}: preload PUT answered {response.status}: {(server.store.parent / 'nginx-error.log').read_text()[-500:] if server.name == 'nginx' else ''}")
    conn.close()


@dataclass
class Cell:
    server: str
    op: str
    size: str
    conc: int
    rps: float
    mbps: float
    p99_ms: float
    errors: int
    cpu_s_per_gb: float | None
    rss_growth_mb: float | None
    cpu_us_per_request: float | None = None


def parse_latency_ms(text: str) -> float:
    match = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not match:
        return math.nan
    value, unit = float(match[1]), match[2]
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_load(server: Server, op: str, size_name: str, conc: int, seconds: int, body_file: Path, prefix: str,
             script: Path) -> tuple[int, int, float, float]:
    """(requests, errors, elapsed seconds, p99 ms). wrk for 4 KiB bodies; loadgen.py (sendfile) for large ones.
    MISS: GETs of keys nobody stored, where 404 is the expected answer."""
    if size_name == "4k":
        env = {**os.environ, "BENCH_METHOD": "GET" if op == "MISS" else op, "BENCH_PREFIX": prefix, "BENCH_NKEYS": str(PRELOAD[size_name]),
               "BENCH_TOKEN": TOKEN, "BENCH_BODY": str(body_file)}
        result = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s",
                                 str(script), f"http://127.0.0.1:{server.port}"], capture_output=True, text=True,
                                env=env, timeout=seconds + 60)
        out = result.stdout
        if result.returncode != 0 or "requests in" not in out:
            raise RuntimeError(f"wrk failed against {server.name}: {out}{result.stderr}")
        requests = int(re.search(r"(\d+) requests in", out)[1])
        amount, unit = re.search(r"requests in ([\d.]+)(ms|s|m),", out).groups()
        elapsed = float(amount) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[unit]
        non_2xx = int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        errors = requests - non_2xx if op == "MISS" else non_2xx
        if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
            errors += sum(int(x) for x in m.groups())
        return requests, errors, elapsed, parse_latency_ms(out)
    result = subprocess.run([sys.executable, str(HERE / "loadgen.py"), "--port", str(server.port), "--op", op,
                             "--conc", str(conc), "--seconds", str(seconds), "--size", str(SIZES[size_name]),
                             "--token", TOKEN, "--prefix", prefix, "--nkeys", str(PRELOAD[size_name]),
                             "--body", str(body_file)], capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(f"loadgen failed against {server.name}: {result.stderr}")
    data = json.loads(result.stdout)
    return data["requests"], data["errors"], data["seconds"], data["p99_ms"]


def run_cell(server: Server, op: str, size_name: str, conc: int, seconds: int, body_file: Path, prefix: str,
             script: Path) -> Cell:
    pids = server.worker_pids()
    rss_before = sum(proc_status_kb(p, "VmRSS") for p in pids)
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    cpu_before = proc_cpu_seconds(pids)
    requests, errors, elapsed, p99 = run_load(server, op, size_name, conc, seconds, body_file, prefix, script)
    cpu = proc_cpu_seconds(pids) - cpu_before
    hwm = sum(proc_status_kb(p, "VmHWM") for p in pids)
    moved = 0 if op == "MISS" else (requests - errors) * SIZES[size_name]
    return Cell(
        server=server.name, op=op, size=size_name, conc=conc,
        rps=(requests - errors) / elapsed, mbps=moved / elapsed / 1e6, p99_ms=p99, errors=errors,
        cpu_s_per_gb=cpu / (moved / 1e9) if moved >= 256 << 20 else None,
        rss_growth_mb=max(0, hwm - rss_before) / 1024,
        cpu_us_per_request=cpu * 1e6 / requests if requests else None,
    )


def clear_put_files(server: Server, prefix: str) -> None:
    """Untimed: drop what a PUT cell wrote so tmpfs does not fill. nxcache evicts by itself (--max-size)."""
    if server.name == "nginx":
        stored = server.store / "v1" / "cache"
    elif server.name in FLOOR_PROCESSES:
        stored = server.store / "e"
    else:
        return
    for path in stored.glob(prefix + "*"):
        path.unlink()


def mount_tmpfs(base: Path) -> bool:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_GIB}g", "tmpfs", str(base)], capture_output=True)
    if result.returncode != 0:
        return False
    # Touch every page once: on a VM the first write to fresh guest memory is several times slower
    # than later ones, which would penalise whichever server happens to write first.
    filler = base / "prefault"
    with open(filler, "wb") as fh:
        block = b"\0" * (64 << 20)
        for _ in range((TMPFS_GIB - 1) * 16):
            fh.write(block)
    filler.unlink()
    return True


def go_ratio(op: str, size: str, conc: int) -> float:
    """The Go peer's ratio to nginx in research/perf.md for one cell; NaN where it has none."""
    if op == "MISS":
        return GO_MISS_RATIO.get((size, conc), math.nan)
    return GO_RATIO.get((size, conc), (math.nan, math.nan))[0 if op == "PUT" else 1]


def above_the_floor(ratio: Callable[[str, str, str, int], float], floors: list[str], concs: list[int]) -> list[str]:
    """The 4 KiB cells whose Go ratio is above every py-floor's ratio in this run, as
    "PUT c32: Go 1.18, py-floor 1.04, py-floor-2proc 1.07": cells that no server written on this
    stack reaches on this host, since the floor does nothing but the protocol."""
    found = []
    for op in ("GET", "PUT", "MISS"):
        for conc in concs:
            go = go_ratio(op, "4k", conc)
            reached = {name: ratio(name, op, "4k", conc) for name in floors}
            if reached and not math.isnan(go) and all(go > r for r in reached.values()):
                found.append(f"{op} c{conc}: Go {go:.2f}, " + ", ".join(f"{n} {r:.2f}" for n, r in reached.items()))
    return found


def geomean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and not math.isnan(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--sizes", default="4k,1m,64m")
    parser.add_argument("--conc", default="1,8,32")
    parser.add_argument("--servers", default="nginx,nxcache,nxcache-nofsync")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.jsonl"))
    parser.add_argument("--storage-in", type=existing_directory,
                        help="store in a new directory here (a disk), not on a tmpfs")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run each nxcache server from REV's sources (git revision) as NAME@base, "
                             "and print how every cell compares")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop servers, unmount
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            print(f"cachebench: {tool} is not installed (Debian package '{tool}')", file=sys.stderr)
            return 2
    sizes = args.sizes.split(",")
    concs = [int(c) for c in args.conc.split(",")]
    names = args.servers.split(",")
    sources: dict[str, Path] = {}
    if args.baseline:
        baseline_src = export(args.baseline, Path(tempfile.mkdtemp(prefix="nxcache-baseline-")))
        for name in [n for n in names if n in NXCACHE_FLAGS]:
            names.append(f"{name}@base")
            sources[f"{name}@base"] = baseline_src
        print(f"baseline: {args.baseline} ({baseline_src})")
    base = Path(tempfile.mkdtemp(prefix="nxcache-bench-", dir=args.storage_in))
    on_tmpfs = args.storage_in is None and mount_tmpfs(base)
    if not on_tmpfs:
        base.chmod(0o755)  # mkdtemp's 0700 would keep nginx's worker (nobody) out; a tmpfs root is 1777
    where = "tmpfs" if on_tmpfs else "disk, --storage-in" if args.storage_in else "disk (could not mount a tmpfs)"
    print(f"storage: {where} at {base}; {args.reps} reps x {args.seconds:g}s per cell")
    script = base / "bench.lua"
    script.write_text(WRK_SCRIPT)
    cells: list[Cell] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for rep in range(args.reps):
            for size_name in sizes:
                run_dir = base / f"r{rep}-{size_name}"
                run_dir.mkdir()
                body = os.urandom(SIZES[size_name])
                body_file = run_dir / "body.bin"
                body_file.write_bytes(body)
                servers: list[Server] = []
                try:
                    for name in names:
                        if name == "nginx":
                            servers.append(start_nginx(run_dir))
                        elif name in FLOOR_PROCESSES:
                            if size_name == "4k":  # it reads whole bodies into memory
                                servers.append(start_floor(run_dir, name))
                        else:
                            flags = NXCACHE_FLAGS[name.removesuffix("@base")]
                            servers.append(start_nxcache(run_dir, name, flags, sources.get(name)))
                    for server in servers:
                        preload(server, size_name, body, "g")
                    for op in ("GET", "PUT", "MISS") if size_name == "4k" else ("GET", "PUT"):
                        for conc in concs:
                            order = servers[:]
                            random.shuffle(order)
                            for server in order:
                                prefix = f"p{conc}x{secrets.token_hex(3)}x"
                                cell = run_cell(server, op, size_name, conc, args.seconds, body_file,
                                                {"GET": "g", "MISS": "absent"}.get(op, prefix), script)
                                cells.append(cell)
                                with out.open("a") as fh:
                                    fh.write(json.dumps({"rep": rep, **cell.__dict__}) + "\n")
                                print(f"  rep {rep + 1} {op} {size_name:>3} c{conc:<2} {server.name:<16} {cell.rps:10.0f} req/s"
                                      f" {cell.mbps:9.1f} MB/s p99 {cell.p99_ms:8.2f} ms errors {cell.errors}", flush=True)
                                if op == "PUT":
                                    clear_put_files(server, prefix)
                finally:
                    for server in servers:
                        server.stop()
                    shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        if on_tmpfs:
            subprocess.run(["umount", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)
    report(cells, names, sizes, concs)
    if sources:
        guard(cells, [n.removesuffix("@base") for n in sources], sizes, concs)
    return 0


def export(rev: str, into: Path) -> Path:
    """The cache server's sources at `rev` (a git revision, WORKTREE for the files on disk, or a
    directory holding a `cache_server` package), as a directory to put on PYTHONPATH."""
    src = ROOT / "cache_server" / "src"
    if (Path(rev) / "cache_server" / "__init__.py").is_file():
        return Path(rev).resolve()
    if rev == "WORKTREE":
        shutil.copytree(src / "cache_server", into / "cache_server", ignore=shutil.ignore_patterns("__pycache__"))
        return into
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "cache_server/src"], capture_output=True,
                             check=False)
    if archive.returncode != 0:
        raise SystemExit(f"cannot export {rev!r}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "cache_server" / "src"


def guard(cells: list[Cell], names: list[str], sizes: list[str], concs: list[int]) -> None:
    """Each nxcache server against its baseline, cell by cell: req/s and server CPU per request."""
    med = functools.partial(cell_median, cells)

    print("\nAgainst the baseline (medians over reps): req/s now / baseline, and server CPU us per request.")
    print("| server | op | size | C | req/s | baseline req/s | now / baseline | us/req | baseline us/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst: tuple[float, str] = (math.inf, "")
    for name in names:
        for op in ("GET", "PUT", "MISS"):
            for size in sizes if op != "MISS" else [s for s in sizes if s == "4k"]:
                for conc in concs:
                    now, then = med(name, op, size, conc, "rps"), med(f"{name}@base", op, size, conc, "rps")
                    ratio = now / then if then else math.nan
                    if ratio < worst[0]:
                        worst = (ratio, f"{name} {op} {size} c{conc}")
                    print(f"| {name} | {op} | {size} | {conc} | {now:,.0f} | {then:,.0f} | {ratio:.2f} | "
                          f"{med(name, op, size, conc, 'cpu_us_per_request'):.0f} | "
                          f"{med(f'{name}@base', op, size, conc, 'cpu_us_per_request'):.0f} |")
    print(f"worst cell: {worst[1]} at {worst[0]:.2f} of the baseline")


def cell_median(cells: list[Cell], server: str, op: str, size: str, conc: int, attr: str) -> float:
    """The median of `attr` over the reps of one server's cell (NaN when none measured it)."""
    values = [getattr(c, attr) for c in cells if (c.server, c.op, c.size, c.conc) == (server, op, size, conc)
              and getattr(c, attr) is not None]
    return statistics.median(values) if values else math.nan


def report(cells: list[Cell], names: list[str], sizes: list[str], concs: list[int]) -> None:
    med = functools.partial(cell_median, cells)

    others = [n for n in names if n != "nginx"]
    print("\nMedians over reps. ratio = server / nginx (req/s). Go = the Go peer's ratio in research/perf.md.")
    header = "| op | size | C | nginx req/s | nginx p99 ms | " + " | ".join(
        f"{n} req/s | {n} p99 ms | {n} x nginx" for n in others) + " | Go x nginx |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    ratios: dict[str, dict[str, list[float]]] = {n: {"GET": [], "PUT": []} for n in others}
    cell_ratios: dict[tuple[str, str, str, int], float] = {}
    for op in ("GET", "PUT", "MISS"):
        for size in sizes if op != "MISS" else [s for s in sizes if s == "4k"]:
            for conc in concs:
                base_rps = med("nginx", op, size, conc, "rps")
                row = f"| {op} | {size} | {conc} | {base_rps:,.0f} | {med('nginx', op, size, conc, 'p99_ms'):.2f} | "
                parts = []
                for n in others:
                    rps = med(n, op, size, conc, "rps")
                    ratio = cell_ratios[(n, op, size, conc)] = rps / base_rps if base_rps else math.nan
                    if op != "MISS":  # perf.md's geomeans are over GET and PUT cells
                        ratios[n][op].append(ratio)
                    parts.append(f"{rps:,.0f} | {med(n, op, size, conc, 'p99_ms'):.2f} | {ratio:.2f}")
                print(row + " | ".join(parts) + f" | {go_ratio(op, size, conc):.2f} |")
    print()
    for n in others:
        if n in FLOOR_PROCESSES:
            continue  # 4 KiB cells only: no geomean comparable to perf.md's
        print(f"{n}: geomean x nginx  GET {geomean(ratios[n]['GET']):.2f} (Go {GO_GEOMEAN['GET']:.2f})"
              f"  PUT {geomean(ratios[n]['PUT']):.2f} (Go {GO_GEOMEAN['PUT']:.2f})")
    floors = [n for n in others if n in FLOOR_PROCESSES]
    if "4k" in sizes and floors:
        above = above_the_floor(lambda *cell: cell_ratios[cell], floors, concs)
        print("\n4 KiB cells where the Go peer's ratio is above the bare stack's in this run: "
              + ("; ".join(above) if above else "none"))
    if "4k" in sizes:
        # Less sensitive to a noisy host than req/s: what one request costs the server processes.
        print("\nServer CPU microseconds per request, 4 KiB (median; utime+stime at 10 ms ticks):")
        header = "| op | C | " + " | ".join(f"{n} us/req" for n in names) + " | Go us/req |"
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for op in ("GET", "PUT", "MISS"):
            for conc in concs:
                cost = " | ".join(f"{med(n, op, '4k', conc, 'cpu_us_per_request'):.0f}" for n in names)
                print(f"| {op} | {conc} | {cost} | {GO_US_PER_REQUEST.get((op, conc), math.nan):.0f} |")
    print("\nServer CPU seconds per GB moved (median), and peak RSS growth during the cell (max over reps, MB):")
    header = "| op | size | C | " + " | ".join(f"{n} CPU s/GB" for n in names) + " | Go CPU s/GB | " + " | ".join(
        f"{n} RSS +MB" for n in names) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for op in ("GET", "PUT"):
        for size in [s for s in sizes if s != "4k"]:
            for conc in concs:
                cpu = " | ".join(f"{med(n, op, size, conc, 'cpu_s_per_gb'):.2f}" for n in names)
                go = GO_CPU_PER_GB.get((size, conc), (math.nan, math.nan))[0 if op == "PUT" else 1]
                rss = " | ".join(
                    f"{max([c.rss_growth_mb for c in cells if (c.server, c.op, c.size, c.conc) == (n, op, size, conc)] or [math.nan]):.1f}"
                    for n in names)
                print(f"| {op} | {size} | {conc} | {cpu} | {go:.2f} | {rss} |")


if __name__ == "__main__":
    sys.exit(main())
