"""HTTP-level behaviour of a real server process: every status code Nx can meet, and the failure paths."""

import http.client
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from .server_proc import READ_TOKEN, WRITE_TOKEN, CacheServer, put_headers, read_responses, read_status

MiB = 1 << 20


def test_put_get_conflict_and_miss(server):
    body = os.urandom(300_000)
    assert server.request("PUT", "14190097444946389161", body)[0] == 200
    status, headers, got = server.request("GET", "14190097444946389161")
    assert status == 200 and got == body
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == str(len(body))
    status, _, _ = server.request("PUT", "14190097444946389161", os.urandom(300_001))
    assert status == 409
    assert server.request("GET", "14190097444946389161")[2] == body, "a 409 must not change the entry"
    assert server.request("GET", "1058875541301770677")[0] == 404


def test_small_entry_is_served_inline_with_length(server):
    assert server.request("PUT", "7", b"tiny")[0] == 200
    status, headers, got = server.request("GET", "7")
    assert (status, got, headers["content-length"]) == (200, b"tiny", "4")


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_unauthorized_is_exactly_text_plain(server, method, token):
    status, headers, body = server.request(method, "123", b"x" if method == "PUT" else None, token=token)
    assert status == 401
    assert headers["content-type"] == "text/plain"  # Nx compares this string exactly
    assert b"token" in body


def test_read_only_token_reads_but_may_not_write(server):
    server.request("PUT", "1", b"data")
    assert server.request("GET", "1", token=READ_TOKEN)[:3:2] == (200, b"data")
    status, headers, body = server.request("PUT", "2", b"data", token=READ_TOKEN)
    assert status == 403 and headers["content-type"] == "text/plain" and b"read-only" in body
    assert server.request("GET", "2")[0] == 404


def test_artifact_limit_gives_413(make_server):
    server = make_server("--no-fsync", "--max-artifact-size", "1MiB", "--max-size", "10MiB")
    assert server.request("PUT", "1", b"x" * (MiB + 1))[0] == 413
    assert server.request("PUT", "2", b"x" * MiB)[0] == 200
    assert server.metric("nxcache_rejected_total") == 1


def test_early_answer_reaches_a_client_that_is_still_sending(make_server):
    # Nx sends the whole body before reading; a server that hangs up with unread bytes makes
    # the kernel reset the connection, and the client sees ECONNRESET instead of the 413.
    server = make_server("--no-fsync", "--max-artifact-size", "1MiB", "--max-size", "10MiB")
    sock = server.raw_socket()
    sock.sendall(put_headers("61", 8 * MiB))
    time.sleep(0.3)  # answered by now
    sock.sendall(os.urandom(2 * MiB))
    status, data = read_status(sock)
    assert status == 413 and b"Connection: close" in data
    sock.close()


def test_put_without_content_length_is_411(server):
    sock = server.raw_socket()
    sock.sendall(b"PUT /v1/cache/9 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + WRITE_TOKEN.encode()
                 + b"\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")
    assert read_status(sock)[0] == 411
    sock.close()
    assert server.request("GET", "9")[0] == 404


@pytest.mark.parametrize(
    "path",
    ["/v1/cache/..%2F..%2Fetc%2Fpasswd", "/v1/cache/../../tokens", "/v1/cache/abc.def", "/v1/cache/" + "9" * 129,
     "/v1/cache/a%00b", "/v1/cache/", "/v1/cache/ab/cd"],
)
def test_bad_hashes_never_touch_the_filesystem(server, path):
    status, _, _ = server.request("PUT", path, b"evil")
    assert status in (400, 404)
    assert server.request("GET", path)[0] in (400, 404)
    assert server.entry_files() == []
    assert sorted(p.name for p in server.workdir.iterdir() if not p.name.startswith("server-")) == ["storage", "tokens"]


def test_double_slash_and_prefix_urls(make_server):
    server = make_server("--no-fsync", "--url-prefix", "/nx/cache")
    assert server.request("PUT", "/nx/cache/v1/cache/5", b"a")[0] == 200
    assert server.request("GET", "/nx/cache//v1/cache/5")[2] == b"a"
    assert server.request("GET", "//v1/cache/5")[2] == b"a"  # Nx's URL with a trailing slash
    assert server.request("GET", "/nx/cache/health", token=None)[0] == 200


def test_head_and_unknown_methods(server):
    server.request("PUT", "3", b"abc")
    status, headers, body = server.request("HEAD", "3")
    assert (status, headers["content-length"], body) == (200, "3", b"")
    status, headers, _ = server.request("DELETE", "3")
    assert status == 405 and "PUT" in headers["allow"]
    assert server.request("GET", "3")[2] == b"abc"
    assert server.request("GET", "/nope", token=None)[0] == 404


def test_head_refusals_carry_no_body_so_the_next_answer_on_the_connection_is_intact(server):
    """Each HEAD is followed on the connection by a GET; the GET's answer must begin where the
    HEAD answer's head ends (a body there would be read as the next answer's status line)."""
    server.request("PUT", "7", b"seven")
    get = f"GET /v1/cache/7 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n\r\n".encode()
    for path, token, status in (("/v1/cache/7", "wrong", 401), ("/v1/cache/a.b", WRITE_TOKEN, 400),
                                ("/nope", None, 404)):
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        sock = server.raw_socket()
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode() + get)
        data = b""
        while not data.endswith(b"seven"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        sock.close()
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 %d " % status) and b"Content-Length: " in head
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest


def test_client_disconnect_mid_upload_leaves_no_entry(server):
    sock = server.raw_socket()
    sock.sendall(put_headers("31", 4 * MiB) + os.urandom(MiB))
    time.sleep(0.3)
    assert len(server.tmp_files()) == 1, "the upload should be in progress"
    sock.close()
    deadline = time.monotonic() + 5
    while server.tmp_files() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.tmp_files() == []
    assert server.request("GET", "31")[0] == 404
    assert server.entry_files() == []
    assert server.metric("nxcache_reserved_bytes") == 0
    assert server.request("PUT", "31", b"retry")[0] == 200


def test_kill_9_mid_upload_leaves_no_entry_and_is_swept(make_server):
    server = make_server("--no-fsync")
    sock = server.raw_socket()
    sock.sendall(put_headers("32", 4 * MiB) + os.urandom(2 * MiB))
    time.sleep(0.3)
    assert len(server.tmp_files()) == 1
    server.stop(signal.SIGKILL)
    sock.close()
    assert server.entry_files() == []
    server.start()
    assert server.tmp_files() == []
    assert "removed 1 incomplete upload" in server.stderr_path.read_text()
    assert server.request("GET", "32")[0] == 404


def test_stalled_body_is_cut_off(make_server):
    server = make_server("--no-fsync", "--body-timeout", "1")
    sock = server.raw_socket()
    sock.sendall(put_headers("33", 1000) + b"x" * 10)
    started = time.monotonic()
    status, _ = read_status(sock)
    assert status == 408 and time.monotonic() - started < 5
    assert sock.recv(100) == b"", "connection must be closed"
    assert server.request("GET", "33")[0] == 404 and server.tmp_files() == []


def test_request_head_trickled_byte_by_byte_is_cut_off(make_server):
    server = make_server("--no-fsync", "--body-timeout", "1")
    sock = server.raw_socket()
    sock.settimeout(0.2)
    head = b"GET /v1/cache/1 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    started = time.monotonic()
    answer = b""
    for byte in head:  # each byte well within the body timeout, the whole head far beyond it
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            answer += sock.recv(1000)
            break
        except TimeoutError:
            continue
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 5


def test_idle_connection_is_closed(make_server):
    server = make_server("--no-fsync", "--idle-timeout", "1")
    sock = server.raw_socket()
    started = time.monotonic()
    assert sock.recv(100) == b""
    assert time.monotonic() - started < 5


def _closed_by_server(sock: socket.socket, wait: float = 2.0) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(100) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def _spoke(server) -> socket.socket:
    """A keep-alive connection that made one request and now sits idle."""
    sock = server.raw_socket()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_status(sock)[0] == 200
    return sock


def test_idle_sockets_cannot_use_up_the_servers_descriptors(make_server):
    """About as many idle sockets as the descriptor limit allowed took the server down: accept
    failed, and every later client (an Nx build) got a network error. At the connection cap (by
    default what the limit allows) the longest-idle connection is closed for the new one."""
    server = make_server("--no-fsync", prefix=("prlimit", "--nofile=256:256", "--"))
    idle = [server.raw_socket() for _ in range(300)]
    assert server.request("GET", "/health", token=None)[0] == 200
    assert sum(_closed_by_server(sock, 0.2) for sock in idle[:100]) == 100, "the longest idle went first"
    for sock in idle:
        sock.close()


def test_one_address_gets_its_share_and_its_own_idle_connections_make_room(make_server):
    server = make_server("--no-fsync", "--max-connections-per-address", "4")
    first = [_spoke(server) for _ in range(6)]  # each new one past 4 closes the longest-idle one
    assert [_closed_by_server(sock, 0.5) for sock in first] == [True, True, False, False, False, False]
    for sock in first[2:]:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_status(sock)[0] == 200
        sock.close()


def test_a_new_connection_gets_503_when_every_one_is_busy(make_server):
    server = make_server("--no-fsync", "--max-connections", "2")
    busy = [server.raw_socket() for _ in range(2)]
    for sock in busy:  # uploads whose bodies have not arrived: requests in flight, not idle
        sock.sendall(put_headers(f"busy{sock.fileno()}", 1000))
    time.sleep(0.3)
    refused = server.raw_socket()
    status, data = read_status(refused)
    assert status == 503 and b"Retry-After: 1" in data and b"Connection: close" in data
    for sock in busy:
        sock.sendall(b"x" * 1000)
        assert read_status(sock)[0] == 200
        sock.close()


def test_a_connection_that_never_speaks_gets_the_short_timeout(make_server):
    server = make_server("--no-fsync", "--first-byte-timeout", "0.5", "--idle-timeout", "30")
    silent, used = server.raw_socket(), _spoke(server)
    started = time.monotonic()
    assert _closed_by_server(silent, 5) and time.monotonic() - started < 3
    assert not _closed_by_server(used, 1), "a connection that made a request keeps the idle timeout"
    silent.close()
    used.close()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.parametrize("path, auth", [("/v1/cache/big64", True), ("/metrics", False)], ids=["cache-get", "metrics"])
def test_a_client_that_pipelines_and_never_reads_holds_no_memory(make_server, path, auth):
    """256 KiB of pipelined GETs for a 64 KiB entry, never read, took the server from 31 to
    109 MiB (and kept it past the idle timeout). Answers now wait for room in the socket and
    reading stops; a client that reads nothing for --body-timeout is cut off."""
    server = make_server("--no-fsync", "--body-timeout", "2")
    assert server.request("PUT", "big64", os.urandom(64 << 10))[0] == 200
    before = _rss_kib(server.proc.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    token = f"Authorization: Bearer {WRITE_TOKEN}\r\n" if auth else ""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{token}\r\n".encode()
    pipelined = request * ((256 << 10) // len(request))
    sock.settimeout(3)
    sent = 0
    try:
        while sent < len(pipelined):
            sent += sock.send(pipelined[sent:sent + 65536])
    except TimeoutError:
        pass  # the server stopped reading: what the test wanted
    time.sleep(1)
    grown = _rss_kib(server.proc.pid) - before
    assert grown < 16 << 10, f"the server grew {grown} KiB for one connection that reads nothing"
    # Cut off after --body-timeout of not reading: what is left in the socket ends in a reset or EOF.
    time.sleep(3)
    sock.settimeout(10)
    ended = False
    try:
        while sock.recv(1 << 20):
            pass
        ended = True
    except ConnectionResetError:
        ended = True
    assert ended
    sock.close()
    assert server.request("GET", "/health", token=None)[0] == 200


def test_rejected_upload_is_drained_and_connection_kept(server):
    server.request("PUT", "34", b"first")
    sock = server.raw_socket()
    sock.sendall(put_headers("34", 2 * MiB) + os.urandom(2 * MiB))  # Nx sends the body, then reads
    status, _ = read_status(sock)
    assert status == 409
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_status(sock)[0] == 200, "keep-alive must survive a drained 409"
    sock.close()


def _small_window_get(server, key: str) -> socket.socket:
    """A GET from a client whose receive buffer is small: a large body fills the socket at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)  # before connect: caps the window
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /v1/cache/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n\r\n".encode())
    return sock


def test_large_download_to_a_slow_reader_arrives_whole(server):
    """sendfile meets a full socket many times and must wait for room, on either event loop;
    afterwards the connection serves its next request."""
    body = os.urandom(6 * MiB)
    assert server.request("PUT", "slowread", body)[0] == 200
    sock = _small_window_get(server, "slowread")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, got = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(body)}".encode() in head
    reads = 0
    while len(got) < len(body):
        chunk = sock.recv(16 << 10)
        assert chunk, f"connection closed after {len(got)} of {len(body)} bytes"
        got += chunk
        reads += 1
        if reads % 8 == 0:
            time.sleep(0.002)
    assert got == body
    sock.sendall(f"GET /v1/cache/slowread HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n\r\n".encode())
    (status, again), = read_responses(sock, 1)
    assert status == 200 and again == body
    sock.close()


def test_large_download_behind_answers_still_buffered_keeps_its_place(server):
    """Pipelined answers fill the socket and the server's write buffer before a large body's turn:
    its sendfile must wait until they are out, or its bytes would overtake them."""
    inline, big = os.urandom(60 << 10), os.urandom(2 * MiB)
    assert server.request("PUT", "inl", inline)[0] == 200
    assert server.request("PUT", "big", big)[0] == 200
    get = "GET /v1/cache/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + WRITE_TOKEN + "\r\n\r\n"
    keys = ["inl"] * 80 + ["big", "inl"]  # more than the kernel buffers hold
    sock = _small_window_get(server, "inl")
    sock.sendall("".join(get.format(key) for key in keys).encode())
    time.sleep(0.3)  # the client reads nothing yet: answers pile up in the server
    answers = read_responses(sock, 1 + len(keys))
    assert [status for status, _ in answers] == [200] * (1 + len(keys))
    assert [body == (big if key == "big" else inline) for key, (_, body) in zip(["inl", *keys], answers)] == [True] * (1 + len(keys))
    sock.close()


def _open_fds(server) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in server.worker_pids() or [server.proc.pid])


def test_client_leaving_mid_download_leaks_nothing_and_is_logged(server):
    body = os.urandom(6 * MiB)
    assert server.request("PUT", "leaver", body)[0] == 200
    assert server.request("GET", "leaver")[2] == body
    before = _open_fds(server)
    for _ in range(8):
        sock = _small_window_get(server, "leaver")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.close()  # unread bytes: the kernel resets the connection
    assert server.request("GET", "leaver")[2] == body
    deadline = time.monotonic() + 10
    while _open_fds(server) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_fds(server) <= before, "a dropped download left a descriptor open (entry file or socket dup)"
    deadline = time.monotonic() + 5  # the access log is flushed once a second
    while server.logs().count("download aborted") < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.logs().count("download aborted") == 8


@pytest.mark.parametrize("args, uvloop_loaded", [((), True), (("--workers", "2"), True), (("--event-loop", "asyncio"), False)],
                         ids=["default", "2-workers", "asyncio"])
def test_event_loop_in_use(make_server, args, uvloop_loaded):
    srv = make_server(*args)
    assert srv.request("GET", "/health")[0] == 200  # a loop is running (the others may still be starting)

    def loaded() -> list[bool]:
        return ["/uvloop/" in Path(f"/proc/{pid}/maps").read_text() for pid in srv.worker_pids() or [srv.proc.pid]]

    deadline = time.monotonic() + 10  # workers start their loops after the supervisor says "listening"
    while uvloop_loaded and not all(loaded()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loaded() == [uvloop_loaded] * len(loaded())


def test_pipelined_requests_are_answered_in_order(server):
    big, small = os.urandom(3 * MiB), b"small body"
    assert server.request("PUT", "51", big)[0] == 200  # large: sent by sendfile, off the parser
    assert server.request("PUT", "52", small)[0] == 200
    auth = f"Authorization: Bearer {WRITE_TOKEN}\r\n"
    sock = server.raw_socket()
    sock.sendall(
        f"GET /v1/cache/51 HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
        + f"GET /v1/cache/52 HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
        + put_headers("53", 5) + b"third"
        + f"GET /v1/cache/53 HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
        + b"GET /v1/cache/54 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answers = read_responses(sock, 5)
    sock.close()
    assert [status for status, _ in answers] == [200, 200, 200, 200, 401]
    assert answers[0][1] == big and answers[1][1] == small and answers[3][1] == b"third"


@pytest.mark.parametrize("request_bytes, status", [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"GET /v1/cache/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"GET /v1/cache/1 HTTP/1.1\r\nX-Big: " + b"a" * (70 << 10) + b"\r\n\r\n", 431),
    # many tiny headers: their names and values are small, the head is 156 KiB
    (b"GET /v1/cache/1 HTTP/1.1\r\n" + b"a:\r\n" * 40_000 + b"\r\n", 431),
], ids=["not-http", "two-lengths", "one-huge-header", "40000-tiny-headers"])
def test_malformed_or_oversized_requests_are_refused_and_closed(server, request_bytes, status):
    sock = server.raw_socket()
    sock.sendall(request_bytes)
    got, data = read_status(sock)
    assert got == status
    assert b"Connection: close" in data
    while sock.recv(65536):
        pass  # the server hangs up
    sock.close()
    assert server.request("GET", "/health", token=None)[0] == 200


def test_answers_due_before_a_bad_request_are_given_before_it_is_refused(server):
    """A stored PUT (its fsync under way, on the flavours with fsync), a download of 3 MiB (by
    sendfile) and a queued GET, then bytes that are no request, all in one write: the three are
    answered in order, then the 400, then the server hangs up."""
    big = os.urandom(3 * MiB)
    assert server.request("PUT", "61", big)[0] == 200
    auth = f"Authorization: Bearer {WRITE_TOKEN}\r\n"
    sock = server.raw_socket()
    sock.sendall(put_headers("62", 3) + b"abc"
                 + f"GET /v1/cache/61 HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
                 + f"GET /v1/cache/62 HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
                 + b"NOT HTTP AT ALL\r\n\r\n")
    answers = read_responses(sock, 4)
    assert [status for status, _ in answers] == [200, 200, 200, 400]
    assert answers[1][1] == big and answers[2][1] == b"abc"
    while sock.recv(65536):
        pass  # the server hangs up
    sock.close()


def test_bytes_after_a_request_with_connection_close_are_not_processed(server):
    sock = server.raw_socket()
    sock.sendall(put_headers("63", 3, extra="Connection: close\r\n") + b"abc"
                 + put_headers("64", 3) + b"def")
    answers = read_responses(sock, 1)
    assert answers == [(200, b"")]
    assert sock.recv(65536) == b""  # then closed, with nothing more said
    sock.close()
    assert server.request("GET", "63")[2] == b"abc"
    assert server.request("GET", "64")[0] == 404


def test_one_endless_header_is_refused_once_it_passes_the_head_limit(server):
    # The parser holds an unfinished header in memory: it must not grow until the head timeout.
    sock = server.raw_socket()
    sock.sendall(b"GET /v1/cache/1 HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    sock.settimeout(0.05)
    answer = b""
    for _ in range(400):  # up to 6.4 MiB, in pieces that each arrive as reads of their own
        try:
            sock.sendall(b"a" * (16 << 10))
            answer += sock.recv(1000)
            break
        except TimeoutError:
            continue
        except OSError:
            break
    sock.settimeout(5)
    if not answer:
        answer = read_status(sock)[1]
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:60]
    sock.close()
    assert server.request("GET", "/health", token=None)[0] == 200


def test_client_that_half_closes_after_its_request_still_gets_the_answer(server):
    sock = server.raw_socket()
    sock.sendall(put_headers("62", 5) + b"hello")
    sock.shutdown(socket.SHUT_WR)
    status, data = read_status(sock)
    assert status == 200
    sock.close()
    assert server.request("GET", "62")[2] == b"hello"


def test_client_that_pipelines_then_half_closes_gets_every_answer(server):
    """The PUT waits on its fsync (on the flavours with fsync) while the GETs queue behind it
    and the client's EOF arrives: the connection closes after the last answer, not the first."""
    auth = f"Authorization: Bearer {WRITE_TOKEN}\r\n"
    sock = server.raw_socket()
    sock.sendall(put_headers("65", 5) + b"hello"
                 + f"GET /v1/cache/65 HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
                 + f"GET /v1/cache/66 HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    sock.shutdown(socket.SHUT_WR)
    answers = read_responses(sock, 3)
    assert [status for status, _ in answers] == [200, 200, 404]
    assert answers[1][1] == b"hello"
    assert sock.recv(65536) == b""
    sock.close()


def test_expect_100_continue(server):
    sock = server.raw_socket()
    sock.sendall(put_headers("35", 5, extra="Expect: 100-continue\r\n"))
    assert read_status(sock)[0] == 100
    sock.sendall(b"hello")
    assert read_status(sock)[0] == 200
    sock.close()
    sock = server.raw_socket()
    sock.sendall(put_headers("35", 5, extra="Expect: 100-continue\r\n"))
    assert read_status(sock)[0] == 409  # answered before any body byte is sent
    sock.close()
    assert server.request("GET", "35")[2] == b"hello"


def test_concurrent_puts_of_one_hash_store_exactly_one_whole_body(server):
    bodies = [os.urandom(2 * MiB) for _ in range(8)]
    results = [None] * 8

    def upload(i):
        results[i] = server.request("PUT", "4242", bodies[i])[0]

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [409] * 7
    assert server.request("GET", "4242")[2] == bodies[results.index(200)]
    assert len(server.entry_files()) == 1 and server.tmp_files() == []


def test_concurrent_mixed_traffic_is_consistent(server):
    bodies = {str(1000 + i): os.urandom(1000 + i * 4099) for i in range(64)}
    failures = []

    def client(keys):
        for key in keys:
            if server.request("PUT", key, bodies[key])[0] != 200:
                failures.append(("put", key))
            status, _, got = server.request("GET", key)
            if status != 200 or got != bodies[key]:
                failures.append(("get", key))

    threads = [threading.Thread(target=client, args=(list(bodies)[i::32],)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert server.metric("nxcache_puts_total") == 64 and server.metric("nxcache_hits_total") == 64


def test_uploads_arriving_interleaved_on_many_connections_each_store_their_own_bytes(server):
    """Every connection's reads land in one shared receive buffer: whatever an upload keeps of a
    read must be its own copy, for bodies held in memory (16 KiB) and streamed to a file (1 MiB)."""
    bodies = {f"{5000 + i}": os.urandom(16 * 1024 if i % 2 else MiB) for i in range(6)}
    socks = {key: server.raw_socket() for key in bodies}
    for key, sock in socks.items():
        sock.sendall(put_headers(key, len(bodies[key])))
    piece = 4096
    for offset in range(0, MiB, piece):
        for key, sock in socks.items():
            if offset < len(bodies[key]):
                sock.sendall(bodies[key][offset : offset + piece])
        if offset % (64 * piece) == 0:
            time.sleep(0.01)  # let the server read the connections one after another
    for key, sock in socks.items():
        assert read_status(sock)[0] == 200, key
        sock.close()
    for key, body in bodies.items():
        assert server.request("GET", key)[2] == body, key


def test_get_racing_an_upload_is_a_miss_never_a_torn_body(server):
    sock = server.raw_socket()
    body = os.urandom(8 * MiB)
    sock.sendall(put_headers("36", len(body)) + body[: 4 * MiB])
    time.sleep(0.2)
    assert server.request("GET", "36")[0] == 404
    sock.sendall(body[4 * MiB :])
    assert read_status(sock)[0] == 200
    sock.close()
    assert server.request("GET", "36")[2] == body


def test_lru_eviction_over_http(make_server):
    server = make_server("--no-fsync", "--max-size", "3MiB", "--max-artifact-size", "1MiB")
    unit = MiB - 64
    for key in ("1", "2", "3"):
        assert server.request("PUT", key, os.urandom(unit))[0] == 200
    assert server.request("GET", "1")[0] == 200
    assert server.request("PUT", "4", os.urandom(unit))[0] == 200
    assert server.request("GET", "2")[0] == 404
    assert [server.request("GET", k)[0] for k in ("1", "3", "4")] == [200, 200, 200]
    assert server.metric("nxcache_evictions_total") == 1
    assert server.metric("nxcache_size_bytes") <= 3 * MiB


def test_damaged_entry_is_a_404_and_shows_in_health(server):
    body = os.urandom(500_000)
    server.request("PUT", "37", body)
    (path,) = server.entry_files()
    with open(path, "r+b") as fh:
        fh.truncate(1000)
    if server.on_s3:  # the damaged copy is the local tier's: the bucket's is fetched again
        assert server.request("GET", "37")[:3:2] == (200, body)
        assert server.metric("nxcache_damaged_entries_total") == 1
        assert list((server.storage / "quarantine").iterdir())
        return
    assert server.request("GET", "37")[0] == 404
    assert server.metric("nxcache_damaged_entries_total") == 1
    assert list((server.storage / "quarantine").iterdir())
    assert server.request("PUT", "37", body)[0] == 200, "the key can be stored again"


def test_health_and_metrics_expose_no_secret(server):
    server.request("PUT", "1", b"x" * 100)
    server.request("GET", "1")
    server.request("GET", "2")
    status, headers, body = server.request("GET", "/health", token=None)
    health = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert health["status"] == "ok" and health["entries"] == 1
    # 164 bytes are charged a whole block on disk; the S3 backend counts the bucket's bytes
    assert health["bytes"] == (100 if server.on_s3 else os.statvfs(server.storage).f_frsize)
    assert health["last_storage_error"] is None and health["free_disk_bytes"] > 0
    for name in ("nxcache_hits_total", "nxcache_misses_total", "nxcache_puts_total", "nxcache_conflicts_total",
                 "nxcache_received_bytes_total", "nxcache_sent_bytes_total", "nxcache_evictions_total",
                 "nxcache_storage_errors_total", "nxcache_entries", "nxcache_size_bytes",
                 "nxcache_request_duration_seconds_bucket"):
        server.metric(name)
    assert server.metric("nxcache_hits_total") == 1 and server.metric("nxcache_misses_total") == 1
    server.stop()
    logs = server.logs()
    assert WRITE_TOKEN not in logs and READ_TOKEN not in logs and WRITE_TOKEN not in body.decode()
    lines = [json.loads(l) for l in server.stdout_path.read_text().splitlines()]
    assert {(l["method"], l["status"], l.get("token")) for l in lines if l["route"] == "cache"} == {
        ("PUT", 200, "writer"), ("GET", 200, "writer"), ("GET", 404, "writer")}


def test_tokens_reload_on_change_and_sighup_without_dropping_requests(server):
    from cache_server.auth import Scope, token_line

    sock = server.raw_socket()  # an upload in flight across the reload
    sock.sendall(put_headers("38", 2 * MiB) + os.urandom(MiB))
    server.tokens.write_text(token_line("new", Scope.READWRITE, "brand-new-token"))
    deadline = time.monotonic() + 10
    while server.request("GET", "1", token="brand-new-token")[0] != 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.request("GET", "1", token="brand-new-token")[0] == 404
    assert server.request("GET", "1", token=WRITE_TOKEN)[0] == 401
    sock.sendall(os.urandom(MiB))
    assert read_status(sock)[0] == 200, "the upload authorised before the reload completes"
    sock.close()
    # SIGHUP with an invalid file keeps the old table
    server.tokens.write_text("broken\n")
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert server.request("GET", "1", token="brand-new-token")[0] == 404
    assert "tokens not reloaded" in server.stderr_path.read_text()


def test_sigterm_drains_requests_in_flight(make_server):
    server = make_server("--no-fsync")
    sock = server.raw_socket()
    sock.sendall(put_headers("39", 2 * MiB) + os.urandom(MiB))
    time.sleep(0.2)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()  # no new connections
    sock.sendall(os.urandom(MiB))
    assert read_status(sock)[0] == 200
    sock.close()
    assert server.proc.wait(10) == 0
    assert len(server.entry_files()) == 1


def test_sighup_reloads_tokens_at_once(server):
    from cache_server.auth import Scope, token_line

    server.tokens.write_text(token_line("rotated", Scope.READWRITE, "rotated-token"))
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)  # well under the 2 s file poll: only the signal can have reloaded it
    assert server.request("GET", "1", token="rotated-token")[0] == 404
    assert server.request("GET", "1", token=WRITE_TOKEN)[0] == 401
    assert "tokens reloaded (SIGHUP)" in server.stderr_path.read_text()


def test_a_reload_to_an_empty_tokens_file_keeps_the_tokens_in_force(server):
    """Start-up refuses a file with no tokens; a reload does too, rather than refuse every client."""
    server.tokens.write_text("# nothing here yet\n")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "has no tokens: refused" not in server.stderr_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "tokens not reloaded (SIGHUP)" in server.stderr_path.read_text()
    assert server.request("GET", "1", token=WRITE_TOKEN)[0] == 404
    status, _, body = server.request("GET", "/health", token=None)
    assert status == 200 and json.loads(body)["status"] == "ok" and json.loads(body)["tokens"] >= 1


def test_a_revoked_token_fails_on_a_connection_that_proved_it_before(server):
    from cache_server.auth import Scope, token_line

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    auth = {"Authorization": f"Bearer {WRITE_TOKEN}"}

    def get() -> int:
        conn.request("GET", "/v1/cache/41", headers=auth)
        response = conn.getresponse()
        response.read()
        return response.status

    assert [get(), get()] == [404, 404]
    sock = conn.sock
    server.tokens.write_text(token_line("rotated", Scope.READWRITE, "rotated-token"))
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while (status := get()) != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 401
    assert conn.sock is sock, "the same keep-alive connection"
    conn.close()


def test_background_scrub_quarantines_a_damaged_large_entry(make_server):
    server = make_server("--no-fsync", "--scrub-interval", "1")
    body = os.urandom(2 * MiB)
    assert server.request("PUT", "40", body)[0] == 200
    (path,) = server.entry_files()
    with open(path, "r+b") as fh:  # flip one bit: the size still matches, only the checksum can tell
        fh.seek(MiB)
        byte = fh.read(1)
        fh.seek(MiB)
        fh.write(bytes([byte[0] ^ 1]))
    deadline = time.monotonic() + 10
    while server.entry_files() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.entry_files() == []
    assert server.request("GET", "40")[0] == 404
    assert server.metric("nxcache_damaged_entries_total") == 1
    assert "scrub: 1 entries checked, 1 damaged" in server.stderr_path.read_text()


def test_put_heads_that_send_no_body_evict_nothing(tmp_path):
    """#26 (3): heads of 8 MiB with no body, from a write token, leave every stored entry in place."""
    server = CacheServer(tmp_path, "--max-size", "24MiB", "--max-artifact-size", "16MiB", "--no-fsync").start()
    try:
        body = os.urandom(1024 * 1024 - 64)
        for i in range(20):
            assert server.request("PUT", f"5{i}", body)[0] == 200
        heads = []
        for i in range(8):
            sock = server.raw_socket()
            sock.sendall(put_headers(f"77{i}", 8 * 1024 * 1024))
            heads.append(sock)
        time.sleep(0.5)
        assert [server.request("GET", f"5{i}")[0] for i in range(20)] == [200] * 20
        assert server.metric("nxcache_reserved_bytes") <= 16 * 1024 * 1024 + 64, "one token's share only"
        for sock in heads:
            sock.close()
    finally:
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_max_entries_caps_the_count_and_health_reports_inodes(make_server, workers):
    srv = make_server("--max-entries", "3", "--workers", workers)
    for i in range(6):
        assert srv.request("PUT", f"cap{i}", b"e" * 10)[0] == 200
        time.sleep(0.05)  # two workers: each hears the other's entries before its next upload
    health = json.loads(srv.request("GET", "/health", token=None)[2])
    assert health["max_entries"] == 3 and health["free_disk_files"] != 0
    on_disk = [p for p in (srv.storage / "entries").rglob("*") if p.is_file()]
    assert len(on_disk) <= 3 + int(workers) - 1, on_disk  # each worker may pass it by its own upload
    assert srv.request("GET", "cap5")[0] == 200


def test_every_metric_the_reference_names_is_served_under_that_name(make_server):
    """docs/reference.md is what operators put in their dashboards and alerts."""
    reference = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
    section = reference.split("## Cache server metrics", 1)[1].split("\n## ", 1)[0]
    documented = {name for name in re.findall(r"`(nxcache_[a-z_]+)", section)}
    body = make_server().request("GET", "/metrics", token=None)[2].decode()
    served = set(re.findall(r"^# TYPE (nxcache_[a-z_]+) ", body, re.M))
    assert len(documented) >= 19 and documented == served, (documented - served, served - documented)


def test_a_storage_directory_that_did_not_exist_is_created_and_said_so(make_server, tmp_path):
    fresh = tmp_path / "not" / "there" / "yet"
    srv = make_server(storage=fresh)
    assert fresh.is_dir() and f"created the storage directory {fresh} (it did not exist)" in srv.logs()
    srv.stop()
    again = make_server(storage=fresh)  # writes its logs over the first one's
    assert "listening" in again.logs() and "created the storage directory" not in again.logs()
