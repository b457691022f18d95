"""`--workers N`: several server processes on one address and one storage directory.

Each test pins connections to particular workers (found through /proc), so what one
worker did is checked through the other.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from .server_proc import WRITE_TOKEN, CacheServer, put_headers, read_status

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")


def call(conn: http.client.HTTPConnection, method: str, key_or_path: str, body: bytes | None = None,
         token: str | None = WRITE_TOKEN) -> tuple[int, bytes]:
    path = key_or_path if key_or_path.startswith("/") else f"/v1/cache/{key_or_path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def metrics(conn: http.client.HTTPConnection) -> dict[str, float]:
    status, body = call(conn, "GET", "/metrics", token=None)
    assert status == 200
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def eventually(check, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


def test_each_worker_serves_what_the_other_stored(make_server):
    srv = make_server("--workers", "2")
    assert len(srv.worker_pids()) == 2
    a, b = srv.connection_per_worker().values()
    small, large = os.urandom(5000), os.urandom(300_000)
    assert call(a, "PUT", "small1", small)[0] == 200
    assert call(b, "PUT", "large1", large)[0] == 200
    # No waiting: a key the replica has not heard of yet is looked up on disk.
    assert call(b, "GET", "small1") == (200, small)
    assert call(a, "GET", "large1") == (200, large)
    assert call(b, "PUT", "small1", small)[0] == 409
    assert call(a, "PUT", "large1", large)[0] == 409
    assert call(a, "GET", "absent1")[0] == 404
    assert call(b, "GET", "absent1")[0] == 404


def test_metrics_and_health_add_up_every_worker(make_server):
    srv = make_server("--workers", "2")
    a, b = srv.connection_per_worker().values()
    for i in range(3):
        assert call(a, "PUT", f"ka{i}", os.urandom(1000 + i))[0] == 200
    for i in range(2):
        assert call(b, "PUT", f"kb{i}", os.urandom(2000 + i))[0] == 200
    for key in ("ka0", "ka1", "kb0", "kb1"):
        assert call(a, "GET", key)[0] == 200
    assert call(b, "GET", "ka2")[0] == 200
    assert call(b, "GET", "nothing")[0] == 404
    assert call(a, "PUT", "kb0", b"x" * 2000)[0] == 409
    for conn in (a, b):
        seen = metrics(conn)
        assert seen["nxcache_puts_total"] == 5
        assert seen["nxcache_hits_total"] == 5
        assert seen["nxcache_misses_total"] == 1
        assert seen["nxcache_conflicts_total"] == 1
        assert seen["nxcache_entries"] == 5
        assert seen['nxcache_request_duration_seconds_count{method="PUT"}'] == 6
        assert seen["nxcache_received_bytes_total"] == 3 * 1000 + 3 + 2 * 2000 + 1
        status, body = call(conn, "GET", "/health", token=None)
        assert status == 200 and b'"entries": 5' in body


def test_eviction_keeps_the_cap_and_counts_hits_on_every_worker(make_server):
    srv = make_server("--workers", "2", "--no-fsync", "--max-size", "650KiB", "--max-artifact-size", "200KiB",
                      "--min-free-disk", "0", "--memory-cache", "0")
    a, b = srv.connection_per_worker().values()
    bodies = {f"e{i}": os.urandom(100 << 10) for i in range(8)}
    for i in range(5):
        assert call(a if i % 2 else b, "PUT", f"e{i}", bodies[f"e{i}"])[0] == 200
    time.sleep(0.3)
    assert call(b, "GET", "e0") == (200, bodies["e0"])  # e0 is now the most recently used, on b only
    time.sleep(0.3)  # hits reach the other replica within 0.1 s
    for i in (5, 6, 7):
        assert call(a, "PUT", f"e{i}", bodies[f"e{i}"])[0] == 200
    on_disk = sum(p.stat().st_size for p in srv.entry_files())
    assert on_disk <= 650 << 10
    assert call(a, "GET", "e0") == (200, bodies["e0"])
    assert call(b, "GET", "e0") == (200, bodies["e0"])
    assert call(b, "GET", "e1")[0] == 404  # the least recently used went first
    assert call(a, "GET", "e7") == (200, bodies["e7"])
    evictions = metrics(b)["nxcache_evictions_total"]
    assert evictions == 8 - len(srv.entry_files())  # each eviction counted once, by whoever made it
    assert eventually(lambda: metrics(b)["nxcache_entries"] == len(srv.entry_files()))


def test_an_evicted_entry_leaves_the_memory_of_every_worker(make_server):
    srv = make_server("--workers", "2", "--no-fsync", "--max-size", "300KiB", "--max-artifact-size", "64KiB",
                      "--min-free-disk", "0")
    a, b = srv.connection_per_worker().values()
    old = os.urandom(60_000)
    assert call(a, "PUT", "hot1", old)[0] == 200
    assert call(b, "GET", "hot1") == (200, old)  # now in b's memory cache too
    assert call(b, "GET", "hot1") == (200, old)
    time.sleep(0.3)  # b's hits reach a's index before the fillers (late, they would make hot1 the newest)
    for i in range(6):  # push hot1 out, through a
        assert call(a, "PUT", f"filler{i}", os.urandom(60_000))[0] == 200
    assert not (srv.storage / "entries" / "ho" / "hot1").exists()
    assert eventually(lambda: call(b, "GET", "hot1")[0] == 404)
    new = os.urandom(60_000)
    assert call(a, "PUT", "hot1", new)[0] == 200
    assert call(b, "GET", "hot1") == (200, new)


def test_a_crashed_worker_stops_the_whole_server_with_one_clear_line(make_server):
    srv = make_server("--workers", "2")
    victim, survivor = srv.worker_pids()
    os.kill(victim, signal.SIGKILL)
    assert srv.proc.wait(15) == 1
    assert re.search(r"worker \d was killed by signal 9; stopping the other 1 so that the whole server restarts", srv.logs())
    assert not os.path.exists(f"/proc/{survivor}") or "Z" in open(f"/proc/{survivor}/stat").read().split()[2]


def test_workers_die_with_a_killed_supervisor(make_server):
    srv = make_server("--workers", "2")
    pids = srv.worker_pids()
    srv.proc.kill()
    srv.proc.wait()

    def gone(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    assert eventually(lambda: all(gone(pid) for pid in pids))

    def refused() -> bool:  # a dying process may hold its sockets until its last thread is gone
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
        except ConnectionRefusedError:
            return True
        return False

    assert eventually(refused)


def test_kill_9_mid_upload_leaves_no_entry_and_is_swept(make_server):
    srv = make_server("--workers", "2")
    sock = srv.raw_socket()
    sock.sendall(put_headers("cut1", 4 << 20) + os.urandom(1 << 20))
    assert eventually(lambda: len(srv.tmp_files()) == 1)
    srv.proc.kill()
    srv.proc.wait()
    sock.close()
    srv.start()
    assert srv.tmp_files() == []
    assert srv.entry_files() == []
    assert srv.request("GET", "cut1")[0] == 404


def test_sigterm_drains_the_requests_in_flight_in_every_worker(make_server):
    srv = make_server("--workers", "2")
    conns = list(srv.connection_per_worker().values())
    bodies = [os.urandom(200_000) for _ in conns]
    for i, (conn, body) in enumerate(zip(conns, bodies)):
        assert conn.sock is not None
        conn.sock.sendall(put_headers(f"drain{i}", len(body)) + body[:1000])
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    for conn, body in zip(conns, bodies):
        assert conn.sock is not None
        conn.sock.sendall(body[1000:])
        assert read_status(conn.sock)[0] == 200
    assert srv.proc.wait(30) == 0
    for i, body in enumerate(bodies):
        files = list((srv.storage / "entries").rglob(f"drain{i}"))
        assert len(files) == 1 and files[0].read_bytes().endswith(body)


def test_a_stop_signal_to_every_process_at_once_is_a_clean_stop(make_server):
    """systemd's stop signals every process of the unit, and the supervisor passes its own on: each
    worker gets SIGTERM more than once, and a late one must not kill it halfway through its
    teardown (the supervisor would exit 1 and the unit would be 'failed', log lines lost)."""
    for _ in range(3):
        srv = make_server("--workers", "2")
        assert srv.request("PUT", "stop1", b"x" * 100)[0] in (200, 409)
        workers = srv.worker_pids()
        srv.proc.send_signal(signal.SIGTERM)
        while srv.proc.poll() is None:  # more SIGTERMs until the end, as a crowd of senders would
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            time.sleep(0.001)
        assert srv.proc.returncode == 0, srv.logs()[-2000:]
        assert "was killed by signal" not in srv.logs()


def test_an_address_already_served_is_refused_not_shared(make_server, tmp_path):
    first = make_server("--workers", "2")
    other = tmp_path / "other"
    other.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "cache_server", "--bind", f"127.0.0.1:{first.port}", "--storage", str(other / "s"),
         "--tokens", str(first.tokens), "--workers", "2"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}: Address already in use" in result.stderr


@pytest.mark.parametrize("value", ["0", "-1", "two", "65"])
def test_bad_worker_counts_are_refused_by_name(tmp_path, value):
    result = subprocess.run([sys.executable, "-m", "cache_server", "--workers", value, "--storage", str(tmp_path / "s")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--workers" in result.stderr and "1 to 64" in result.stderr
    assert not (tmp_path / "s").exists()


def test_auto_is_one_worker_per_core(make_server):
    srv = make_server("--workers", "auto")
    expected = min(8, len(os.sched_getaffinity(0)))
    if expected == 1:
        assert srv.worker_pids() == []
    else:
        assert len(srv.worker_pids()) == expected
    assert srv.request("GET", "/health", token=None)[0] == 200


def test_worker_sockets_give_accepted_connections_tcp_nodelay():
    """asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP; without it the last segment
    of a sendfile waited ~40 ms for the client's delayed ACK (p99 45 ms for 1 MiB GETs)."""
    import asyncio

    from cache_server.config import Settings
    from cache_server.workers import bind_all

    settings = Settings(binds=[("127.0.0.1", 0)], storage="", tokens="", tokens_explicit=True, max_size=1,
                        max_artifact_size=1, min_free_disk=None, fsync=False, memory_cache=0, url_prefix="",
                        body_timeout=1.0, idle_timeout=1.0, drain_timeout=1.0, scrub_interval=0.0, scrub_rate=1,
                        access_log="off", workers=2)
    per_worker = bind_all(settings)
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def scenario():
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(Probe, sock=sockets[0]) for sockets in per_worker]
        port = per_worker[0][0].getsockname()[1]
        for _ in range(8):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.read()
            writer.close()
        for server in servers:
            server.close()

    asyncio.run(scenario())
    assert len(seen) == 8 and all(seen)


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3, 0.6])
def test_a_stop_while_starting_leaves_no_worker_behind(tmp_path, delay):
    srv = CacheServer(tmp_path, "--workers", "3")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cache_server", "--bind", "127.0.0.1:0", "--storage", str(srv.storage),
                             "--tokens", str(srv.tokens), "--workers", "3"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM)

    def leftovers() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if str(srv.storage).encode() in cmdline:
                found.append(pid)
        return found

    assert eventually(lambda: not leftovers()), leftovers()
