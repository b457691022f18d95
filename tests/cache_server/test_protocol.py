"""Connection edge cases that a real client cannot aim at: driven in-process, one loop pass at a time."""

import asyncio
import os
import re

import pytest

from cache_server.accesslog import AccessLog
from cache_server.auth import Scope, TokenStore, token_line
from cache_server.http.handler import CacheHandler
from cache_server.http.connections import HttpServer
from cache_server.metrics import Metrics
from cache_server.storage.disk import INLINE_MAX, DiskStorage

from .in_process import RecordingTransport, run_on


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def make_handler(tmp_path):
    """A handler over a store holding `small` (1 KiB), `mid` (63 KiB) and `big` (sent by sendfile)."""
    made = []

    def make() -> CacheHandler:
        (tmp_path / "tokens").write_text(token_line("w", Scope.READWRITE, "tok"))
        storage = DiskStorage(str(tmp_path / "s"), max_bytes=1 << 30, max_artifact_bytes=1 << 30, min_free_bytes=0,
                              fsync=False)
        for key, size in (("small", 1024), ("mid", 63 << 10), ("big", INLINE_MAX * 2)):
            upload = storage.begin_put(key, size)
            upload.write(b"x" * size)
            upload.commit()
        made.append(storage)
        return CacheHandler(storage=storage, tokens=TokenStore(str(tmp_path / "tokens")), metrics=Metrics(storage),
                            access_log=AccessLog(str(tmp_path / "access.log")))

    yield make
    for storage in made:
        storage.close()


def _get(key: str, *extra: str) -> bytes:
    return (f"GET /v1/cache/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n" + "".join(extra) + "\r\n").encode()


def _answers(sent: bytes) -> list[bytes]:
    """Status lines, in the order they were sent."""
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", sent)


def _connect(server: HttpServer, count: int):
    pairs = []
    for _ in range(count):
        conn, transport = server(), RecordingTransport()
        conn.connection_made(transport)
        pairs.append((conn, transport))
    return pairs


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_download_whose_client_leaves_in_the_same_loop_pass_closes_its_file_and_is_logged(make_handler, tmp_path, kind):
    """The client hangs up before the sendfile task's first step: the task is cancelled before
    it ever runs, so its own cleanup never does; the entry's descriptor must still be closed."""
    handler = make_handler()

    async def scenario() -> None:
        conn = HttpServer(handler, idle_timeout=60, body_timeout=30)()
        conn.connection_made(RecordingTransport())
        before = _open_fds()
        conn.data_received(b"GET /v1/cache/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n\r\n")
        assert conn.task is not None and _open_fds() == before + 1  # the entry's file, for sendfile
        conn.connection_lost(ConnectionResetError())
        for _ in range(3):
            await asyncio.sleep(0)
        assert _open_fds() == before
        assert conn.task is None and conn.current is None

    run_on(kind, scenario)
    handler.access_log.flush()
    line = (tmp_path / "access.log").read_text().strip().splitlines()[-1]
    assert '"status":200' in line and "download aborted: client went away" in line


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_answers_read_in_one_loop_pass_are_written_once_the_pass_has_read_every_socket(make_handler, kind):
    """Each answer written at once would wake a waiting client once per answer; held to the end of
    the pass, they go out back to back, and pipelined answers of one connection in one write."""
    handler = make_handler()

    async def scenario() -> None:
        server = HttpServer(handler, idle_timeout=60, body_timeout=30)
        (one, t1), (two, t2) = _connect(server, 2)
        one.data_received(_get("small") + _get("absent"))
        two.data_received(_get("small"))
        assert t1.sent == t2.sent == b""  # nothing written while the pass still reads
        await asyncio.sleep(0)
        assert _answers(t1.sent) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found"] and t1.writes == 1
        assert _answers(t2.sent) == [b"HTTP/1.1 200 OK"] and t2.writes == 1
        assert t1.sent.count(b"x" * 1024) == 1 and t2.sent.endswith(b"x" * 1024)
        one.data_received(_get("small"))  # a later pass: held again, and written again
        assert t1.writes == 1
        await asyncio.sleep(0)
        assert t1.writes == 2 and _answers(t1.sent)[-1] == b"HTTP/1.1 200 OK"

    run_on(kind, scenario)


def test_the_only_open_connection_is_answered_at_once(make_handler):
    """Nothing could be gathered with its answer: holding it would only add a loop pass."""
    handler = make_handler()

    async def scenario() -> None:
        server = HttpServer(handler, idle_timeout=60, body_timeout=30)
        [(conn, transport)] = _connect(server, 1)
        conn.data_received(_get("small"))
        assert _answers(transport.sent) == [b"HTTP/1.1 200 OK"]

    run_on("uvloop", scenario)


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_a_held_answer_keeps_its_place_before_a_100_continue_and_before_a_hang_up(make_handler, kind):
    handler = make_handler()

    async def scenario() -> None:
        server = HttpServer(handler, idle_timeout=60, body_timeout=30)
        (one, t1), (two, t2), _ = _connect(server, 3)
        # A miss, then an upload that waits for "100 Continue": that must follow the 404 now.
        one.data_received(_get("absent") + b"PUT /v1/cache/new HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                          b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert _answers(t1.sent) == [b"HTTP/1.1 404 Not Found", b"HTTP/1.1 100 Continue"]
        one.data_received(b"abc")
        await asyncio.sleep(0)
        assert _answers(t1.sent)[-1] == b"HTTP/1.1 200 OK"
        # A hit, then a request that closes the connection: both answers, in order, before the close.
        two.data_received(_get("small") + _get("absent", "Connection: close\r\n"))
        assert t2.closed
        assert _answers(t2.sent) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found"]
        assert b"Connection: close" in t2.sent.split(b"HTTP/1.1 404")[1]

    run_on(kind, scenario)


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_a_held_answer_goes_out_before_the_head_of_a_sendfile_answer_behind_it(make_handler, kind):
    handler = make_handler()

    async def scenario() -> None:
        server = HttpServer(handler, idle_timeout=60, body_timeout=30)
        (conn, transport), _ = _connect(server, 2)
        conn.data_received(_get("small") + _get("big"))
        for _ in range(3):  # the sendfile task starts, writes the head, then fails on this fake transport
            await asyncio.sleep(0)
        assert _answers(transport.sent) == [b"HTTP/1.1 200 OK"] * 2
        first, second = transport.sent.split(b"HTTP/1.1 200 OK")[1:]
        assert first.endswith(b"x" * 1024) and b"Content-Length: %d" % (INLINE_MAX * 2) in second

    run_on(kind, scenario)


def test_hundreds_of_pipelined_answers_go_out_whole_in_order_and_in_few_writes(make_handler):
    handler = make_handler()

    async def scenario() -> None:
        server = HttpServer(handler, idle_timeout=60, body_timeout=30)
        (conn, transport), _ = _connect(server, 2)
        conn.data_received(b"".join(_get(f"absent{i}") for i in range(500)) + _get("small"))
        await asyncio.sleep(0)
        assert _answers(transport.sent) == [b"HTTP/1.1 404 Not Found"] * 500 + [b"HTTP/1.1 200 OK"]
        assert transport.sent.endswith(b"\r\n\r\n" + b"x" * 1024)  # the last answer's body, whole and last
        assert transport.writes <= len(transport.sent) // (64 << 10) + 1

    run_on("uvloop", scenario)


def test_held_answers_go_to_the_transport_before_they_outgrow_the_hold_cap(make_handler):
    """Past the cap the transport's flow control (pause_writing) must see the bytes this pass."""
    handler = make_handler()

    async def scenario() -> None:
        server = HttpServer(handler, idle_timeout=60, body_timeout=30)
        (conn, transport), _ = _connect(server, 2)
        conn.data_received(_get("small") * 3)
        assert transport.sent == b""
        conn.data_received(_get("mid"))  # 3 KiB + 63 KiB held: over the cap, written now
        assert _answers(transport.sent) == [b"HTTP/1.1 200 OK"] * 4
        conn.data_received(_get("small"))
        assert transport.writes == 1  # a fresh hold
        await asyncio.sleep(0)
        assert transport.writes == 2 and len(_answers(transport.sent)) == 5

    run_on("uvloop", scenario)


def test_health_is_degraded_when_no_token_is_in_force(make_handler, tmp_path):
    """Start-up and reloads refuse a file with no tokens; should a table ever be empty anyway,
    /health says so rather than `ok` while every client gets 401."""
    import json

    handler = make_handler()
    assert json.loads(handler.reports.health([]))["status"] == "ok"
    (tmp_path / "tokens").write_text("# none\n")
    handler.reports.tokens = TokenStore(str(tmp_path / "tokens"))  # a first load may be empty (token add uses it)
    health = json.loads(handler.reports.health([]))
    assert health["status"] == "degraded" and "no tokens: every request is refused" in health["problems"]
