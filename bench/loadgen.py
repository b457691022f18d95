#!/usr/bin/env python3
"""Closed-loop HTTP/1.1 load for large bodies: one keep-alive connection per thread, PUT bodies
sent from one in-memory copy and GET bodies received into a reused buffer, so the client
spends little CPU per byte (wrk builds every request body as a Lua string, which caps it at
~150 MB/s for 64 MiB PUTs here). Loopback only; bounded by time.

    python bench/loadgen.py --port P --op GET|PUT --conc C --seconds S --size BYTES \
        --token T --prefix K [--nkeys N] [--body FILE]

Prints one JSON object: requests, ok, errors, seconds, latencies (p50/p99 ms).
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import threading
import time


def read_head(sock: socket.socket, buf: bytearray) -> tuple[int, int, bytes]:
    """Status, Content-Length and any body bytes that came with the head."""
    data = b""
    while b"\r\n\r\n" not in data:
        n = sock.recv_into(buf, 65536)
        if not n:
            raise ConnectionError("server closed the connection")
        data += bytes(buf[:n])
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, length, rest


def worker(args: argparse.Namespace, keys: itertools.count, lock: threading.Lock, deadline: float,
           latencies: list[float], counts: list[int]) -> None:
    sock = socket.create_connection(("127.0.0.1", args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 20)
    body = memoryview(open(args.body, "rb").read()) if args.op == "PUT" else memoryview(b"")
    auth = f"Authorization: Bearer {args.token}\r\n"
    ok = errors = 0
    try:
        while time.monotonic() < deadline:
            with lock:
                n = next(keys)
            key = f"{args.prefix}{n if args.op == 'PUT' else n % args.nkeys}"
            started = time.perf_counter()
            if args.op == "PUT":
                sock.sendall(f"PUT /v1/cache/{key} HTTP/1.1\r\nHost: b\r\n{auth}Content-Type: application/octet-stream\r\n"
                             f"Content-Length: {args.size}\r\n\r\n".encode())
                sock.sendall(body)
            else:
                sock.sendall(f"GET /v1/cache/{key} HTTP/1.1\r\nHost: b\r\n{auth}\r\n".encode())
            status, length, rest = read_head(sock, buf)
            remaining = length - len(rest)
            view = memoryview(buf)
            while remaining > 0:
                got = sock.recv_into(view, min(len(buf), remaining))
                if not got:
                    raise ConnectionError("short body")
                remaining -= got
            latencies.append(time.perf_counter() - started)
            if 200 <= status < 300 and (args.op == "PUT" or length == args.size):
                ok += 1
            else:
                errors += 1
    except OSError:
        errors += 1
    finally:
        sock.close()
        with lock:
            counts[0] += ok
            counts[1] += errors


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag, kind in (("--port", int), ("--conc", int), ("--seconds", float), ("--size", int), ("--nkeys", int)):
        parser.add_argument(flag, type=kind, default=1)
    for flag in ("--op", "--token", "--prefix", "--body"):
        parser.add_argument(flag, default="")
    args = parser.parse_args()
    lock = threading.Lock()
    keys = itertools.count()
    latencies: list[float] = []
    counts = [0, 0]
    started = time.monotonic()
    deadline = started + args.seconds
    threads = [threading.Thread(target=worker, args=(args, keys, lock, deadline, latencies, counts)) for _ in range(args.conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    print(json.dumps({"requests": len(latencies), "ok": counts[0], "errors": counts[1], "seconds": elapsed,
                      "p50_ms": pct(0.50), "p99_ms": pct(0.99)}))


if __name__ == "__main__":
    main()
