"""What the agent's cache proxy (nxfarm/agent/cache_proxy.py) adds to a build's cache traffic:
PUT then GET of N bodies of each size, straight to the cache server and through the proxy,
side by side (ms per request, one keep-alive client connection, --no-fsync).

usage: .venv/bin/python bench/proxybench.py
"""

from __future__ import annotations

import http.client
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache_server.auth import Scope, token_line  # noqa: E402
from nxfarm.agent.cache_proxy import CacheProxy, Grant  # noqa: E402
from tests.cache_server.server_proc import CacheServer  # noqa: E402

SIZES = ((4096, 300), (1 << 20, 100), (32 << 20, 5))


def run(url: str, token: str, size: int, count: int, prefix: str) -> tuple[float, float]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    body = os.urandom(size)
    started = time.perf_counter()
    for i in range(count):
        connection.request("PUT", f"/v1/cache/{prefix}{i}", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    put = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(count):
        connection.request("GET", f"/v1/cache/{prefix}{i}", headers=headers)
        assert len(connection.getresponse().read()) == size
    get = time.perf_counter() - started
    connection.close()
    return put / count * 1000, get / count * 1000


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="proxybench-"))
    (work / "tokens").write_text(token_line("agent", Scope.READWRITE, "agent-token"))
    server = CacheServer(work, "--no-fsync").start()
    proxy = CacheProxy()
    task = proxy.grant(Grant(server.url, "agent-token", None))
    try:
        print(f"{'body':>10} {'n':>4} | {'direct PUT':>10} {'GET':>8} | {'proxy PUT':>10} {'GET':>8}  (ms/request)")
        for size, count in SIZES:
            direct = run(server.url, "agent-token", size, count, f"1{size}x")
            proxied = run(proxy.url, task, size, count, f"2{size}x")
            print(f"{size:>10} {count:>4} | {direct[0]:>10.2f} {direct[1]:>8.2f} | {proxied[0]:>10.2f} {proxied[1]:>8.2f}")
    finally:
        proxy.close()
        server.stop()


if __name__ == "__main__":
    main()
