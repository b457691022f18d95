"""The bench's own parts: bench/floor.py is a reference in the benchmark tables, so it must
answer the cache API as Nx expects, or its numbers would compare something that a real server
may not do; bench/inprocess.py drives the server's internals, so it must keep up with them."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import cachebench  # noqa: E402
from cache_server.storage.entry_format import HEADER_SIZE  # noqa: E402

TOKEN = cachebench.TOKEN


@pytest.fixture(params=sorted(cachebench.FLOOR_PROCESSES))
def floor(tmp_path, request):
    server = cachebench.start_floor(tmp_path, request.param)  # as the bench starts it
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    yield conn, server.store
    conn.close()
    server.stop()
    assert server.proc.returncode == 0


def ask(conn: http.client.HTTPConnection, method: str, key: str, body: bytes | None = None,
        token: str | None = TOKEN) -> tuple[int, str | None, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, f"/v1/cache/{key}", body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.getheader("Content-Type"), response.read()


def test_floor_answers_the_cache_api_on_one_keep_alive_connection(floor):
    conn, store = floor
    body = os.urandom(4096)
    big = os.urandom(100 << 10)  # past what it keeps in memory: read back from disk
    assert ask(conn, "GET", "abc")[0] == 404
    assert ask(conn, "PUT", "abc", body)[0] == 200
    assert ask(conn, "PUT", "abc", b"other")[0] == 409
    assert ask(conn, "GET", "abc") == (200, "application/octet-stream", body)
    assert ask(conn, "PUT", "big", big)[0] == 200
    assert ask(conn, "GET", "big")[2] == big
    assert ask(conn, "GET", "abc", token=None)[:2] == (401, "text/plain")
    assert ask(conn, "PUT", "new", body, token="wrong")[:2] == (401, "text/plain")
    assert ask(conn, "GET", "a.b")[0] == 400
    assert sorted(p.name for p in (store / "e").iterdir()) == ["abc", "big"]
    assert list((store / "tmp").iterdir()) == []


def test_two_process_floor_finds_what_its_sibling_stored(tmp_path):
    server = cachebench.start_floor(tmp_path, "py-floor-2proc")
    try:
        assert len(server.worker_pids()) == 2
        body = os.urandom(4096)
        # New connections spread over both processes (SO_REUSEPORT hashes the client port), so
        # some of these GETs land on the process that did not store the key: still a hit.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        assert ask(conn, "PUT", "shared", body)[0] == 200
        conn.close()
        for _ in range(16):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            assert ask(conn, "GET", "shared")[::2] == (200, body)
            assert ask(conn, "PUT", "shared", body)[0] == 409
            assert ask(conn, "GET", "absent")[0] == 404
            conn.close()
    finally:
        server.stop()
    assert server.proc.returncode == 0


def test_bench_measures_a_multi_worker_server_only_once_every_worker_runs(tmp_path):
    # Its CPU per request sums the workers' CPU: one not yet forked would be left out.
    assert cachebench.expected_workers([]) == 1
    assert cachebench.expected_workers(["--workers", "3", "--no-fsync"]) == 3
    server = cachebench.start_nxcache(tmp_path, "nxcache-2", ["--workers", "2"])
    try:
        pids = server.worker_pids()
        assert len(pids) == 2 and server.proc.pid not in pids
    finally:
        server.stop()
    assert server.proc.returncode == 0


def test_inprocess_bench_measures_every_operation_for_both():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "inprocess.py"), "--requests", "300", "--runs", "1",
                             "--tokens", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\| (GET|MISS|PUT) \| ([\d.]+) \| [\d.]+ / [\d.]+ \| ([\d.]+) \|", result.stdout, re.M)
    assert [op for op, _, _ in rows] == ["GET", "MISS", "PUT"]
    assert all(float(ours) > 0 and float(bare) > 0 for _, ours, bare in rows)


def test_inprocess_opcode_count_is_steady_from_run_to_run():
    def counts() -> list[tuple[str, str, str]]:
        result = subprocess.run([sys.executable, str(ROOT / "bench" / "inprocess.py"), "--opcodes", "--requests", "50"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return re.findall(r"^\| (GET|MISS|PUT) \| (\d+) \| (\d+) \|", result.stdout, re.M)

    first = counts()
    assert [op for op, _, _ in first] == ["GET", "MISS", "PUT"]
    # Ours does more than the bare stack, and the count does not wander as timings do: only the
    # Date header, made again when the second turns, depends on the clock.
    assert all(int(ours) > int(bare) > 0 for _, ours, bare in first)
    for (op, ours, bare), (_, ours_again, bare_again) in zip(first, counts()):
        assert abs(int(ours_again) - int(ours)) <= int(ours) * 0.02, op
        assert abs(int(bare_again) - int(bare)) <= int(bare) * 0.02, op


def test_pagecost_writes_both_files_and_leaves_nothing(tmp_path):
    """The rows must be the sizes the server and the peers store, and the page counts right."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "pagecost.py"), "--dir", str(tmp_path),
                             "--files", "40", "--reps", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^(artifact alone|header \+ artifact) .*? (\d+) +(\d+)  +((?:[\d.]+ +){2})([\d.]+)$",
                      result.stdout, re.M)
    assert [(what, int(size), int(pages)) for what, size, pages, _, _ in rows] == [
        ("artifact alone", 4096, 1), ("header + artifact", 4096 + HEADER_SIZE, 2)]
    assert all(float(median) > 0 for *_, median in rows)
    assert "x the artifact alone)" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_pagecost_refuses_a_missing_directory(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "pagecost.py"), "--dir", str(tmp_path / "absent")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "absent is not a directory" in result.stderr


def test_bench_refuses_a_missing_storage_directory(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "cachebench.py"), "--storage-in", str(tmp_path / "absent")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--storage-in" in result.stderr and "absent is not a directory" in result.stderr


def test_bench_names_the_cells_whose_go_ratio_is_above_the_bare_stack(capsys):
    def at(ratio: float) -> list[cachebench.Cell]:
        return [cachebench.Cell(server=name, op=op, size="4k", conc=conc, rps=rps, mbps=0.0, p99_ms=1.0, errors=0,
                                cpu_s_per_gb=None, rss_growth_mb=0.0, cpu_us_per_request=10.0)
                for op in ("GET", "PUT", "MISS") for conc in (1, 8, 32)
                for name, rps in (("nginx", 1000.0), ("py-floor", 1000.0 * ratio), ("nxcache", 500.0))]

    cachebench.report(at(1.0), ["nginx", "nxcache", "py-floor"], ["4k"], [1, 8, 32])
    assert "above the bare stack's in this run: PUT c32: Go 1.18, py-floor 1.00\n" in capsys.readouterr().out
    cachebench.report(at(0.93), ["nginx", "nxcache", "py-floor"], ["4k"], [1, 8, 32])
    line = next(x for x in capsys.readouterr().out.splitlines() if "above the bare stack" in x)
    assert line.split(": ", 1)[1].split("; ") == [
        "GET c8: Go 0.95, py-floor 0.93", "PUT c8: Go 0.97, py-floor 0.93", "PUT c32: Go 1.18, py-floor 0.93"]
    cachebench.report(at(1.2), ["nginx", "nxcache", "py-floor"], ["4k"], [1, 8, 32])
    assert "above the bare stack's in this run: none" in capsys.readouterr().out
