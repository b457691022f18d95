"""Any stream of requests, cut into reads at any points, gets the answers a plain model of the
cache API gives, in order, and leaves storage holding exactly what the model stored.

Property-based (hypothesis): a stream is a run of well-formed requests (GET, HEAD, PUT, DELETE;
good, read-only, wrong and missing tokens; valid and invalid keys; `Expect: 100-continue`;
`Connection: close`; header names in any case; extra headers), then maybe one bad tail (random
bytes, a PUT cut short, a chunked PUT, a PUT without Content-Length, a head over 64 KiB). The
stream is cut into reads at random points, as a socket may deliver it, and fed with and
without the fsync thread to one in-process connection, and again over a real socket pair
(the loop's transport: flow control, sendfile past 64 KiB). Checked: every answer up to the
tail is the model's (status, body, Content-Type of a 401, a HEAD answer without body bytes);
the tail gets no 5xx; an answer that closes the connection is the last; no internal error;
no upload file or reservation is left; the entries on disk are the model's, read back through
a fresh `DiskStorage`, clean under scrub, and counted as the server counted them.

Then several connections at once, their pieces interleaved at random: one stored body per key,
from the one PUT answered 200.

Examples are derandomized so CI is repeatable; NXCACHE_FUZZ_EXAMPLES=5000 searches further,
from a new random seed each run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_server.accesslog import AccessLog
from cache_server.auth import Scope, TokenStore, token_line
from cache_server.http.handler import CacheHandler
from cache_server.http.connections import HttpServer
from cache_server.http.protocol import MAX_HEADER_BYTES
from cache_server.metrics import Metrics
from cache_server.storage.base import StorageStats
from cache_server.storage.disk import INLINE_MAX, DiskStorage

from .in_process import RecordingTransport, run_on

TOKENS = {"tok": Scope.READWRITE, "rot": Scope.READ}
VALID_KEYS = ["k1", "k2", "K3", "9z"]
INVALID_KEYS = ["a.b", "..", "x" * 129, "%2F", "k-1"]
SEARCH = os.environ.get("NXCACHE_FUZZ_EXAMPLES")
EXAMPLES = int(SEARCH or 300)


@dataclass
class Request:
    method: str
    key: str
    token: str | None
    body: bytes = b""
    expect: bool = False
    close: bool = False
    extra: list[tuple[str, str]] = field(default_factory=list)
    lower_names: bool = False
    path: str = "/v1/cache/{}"  # also as Nx spells it behind a URL with a trailing slash, or with a query

    def raw(self) -> bytes:
        headers = [("Host", "cache:3333")]
        if self.token is not None:
            headers.append(("Authorization", f"Bearer {self.token}"))
        if self.method == "PUT":
            headers.append(("Content-Length", str(len(self.body))))
            if self.expect:
                headers.append(("Expect", "100-continue"))
        if self.close:
            headers.append(("Connection", "close"))
        headers += self.extra
        if self.lower_names:
            headers = [(name.lower(), value) for name, value in headers]
        head = f"{self.method} {self.path.format(self.key)} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
        return head.encode() + b"\r\n" + self.body


@dataclass
class Expected:
    status: int
    body: bytes | None = None  # checked when not None
    closes: bool = False
    continues: bool = False  # a 100 Continue comes first


def model(req: Request, store: dict[str, bytes]) -> Expected:
    """What the cache API answers, as README and the issue state it; stores a PUT's body in `store`."""
    if req.method == "DELETE":
        return Expected(405, closes=req.close)
    authorized = req.token in TOKENS
    valid = req.key in VALID_KEYS
    if req.method in ("GET", "HEAD"):
        if not authorized:
            return Expected(401, closes=req.close)
        if not valid:
            return Expected(400, closes=req.close)
        if req.key not in store:
            return Expected(404, b"", closes=req.close)
        return Expected(200, store[req.key], closes=req.close)
    # PUT: refused before the body with Expect (and then the connection closes), after it without
    if not authorized:
        return Expected(401, closes=req.close or req.expect)
    if TOKENS[req.token] is not Scope.READWRITE:  # type: ignore[index]
        return Expected(403, closes=req.close or req.expect)
    if not valid:
        return Expected(400, closes=True)
    if req.key in store:
        return Expected(409, closes=req.close or req.expect)
    store[req.key] = req.body
    return Expected(200, b"", closes=req.close, continues=req.expect)


# ------------------------------------------------------------------ strategies

_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,;=/", max_size=30)
def _bodies(largest: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=600),
                     st.builds(lambda size, byte: bytes([byte]) * size, st.integers(0, largest), st.integers(0, 255)))


_SMALL_BODY = _bodies(INLINE_MAX)  # answered inline, from memory or one read
_ANY_BODY = _bodies(4 * INLINE_MAX)  # past INLINE_MAX: sent by sendfile, which needs a real socket


@st.composite
def requests(draw: st.DrawFn, big: bool = False) -> Request:
    method = draw(st.sampled_from(["GET", "GET", "PUT", "PUT", "PUT", "HEAD", "DELETE"]))
    key = draw(st.sampled_from(VALID_KEYS) if draw(st.integers(0, 9)) else st.sampled_from(INVALID_KEYS))
    token = draw(st.sampled_from(["tok", "tok", "tok", "rot", "wrong", None]))
    return Request(
        method=method, key=key, token=token,
        body=draw(_ANY_BODY if big else _SMALL_BODY) if method == "PUT" else b"",
        expect=method == "PUT" and draw(st.integers(0, 4)) == 0,
        close=draw(st.integers(0, 19)) == 0,
        extra=draw(st.lists(st.tuples(st.sampled_from(["X-Trace", "User-Agent", "Accept", "X-Nx-Pad"]), _VALUE),
                            max_size=3)),
        lower_names=draw(st.booleans()),
        path=draw(st.sampled_from(["/v1/cache/{}"] * 6 + ["//v1/cache/{}", "/v1/cache/{}?t=1"])),
    )


def _put_head(key: str, *lines: str) -> bytes:
    return (f"PUT /v1/cache/{key} HTTP/1.1\r\nHost: cache\r\nAuthorization: Bearer tok\r\n"
            + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


# (raw bytes, the one answer it must get, or None: any answer under 500, or none)
TAILS = st.one_of(
    st.just((b"", None)),
    st.builds(lambda data: (data, None), st.binary(min_size=1, max_size=300)),
    st.builds(lambda key, sent: (_put_head(key, f"Content-Length: {sent + 10}") + b"b" * sent, None),
              st.sampled_from(["newkey1", "k1"]), st.integers(0, 2000)),
    st.just((_put_head("newkey2", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n", 411)),
    st.just((_put_head("newkey3"), 411)),
    st.just((b"GET /v1/cache/k1 HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 4096) + b"\r\n\r\n", 431)),
)


# ------------------------------------------------------------------ the wire

@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_answer(sent: bytes, pos: int, head_only: bool) -> tuple[Answer, int]:
    end = sent.index(b"\r\n\r\n", pos)
    status_line, *lines = sent[pos:end].decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), status_line
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        assert sep and name == name.strip(), f"bad header line {line!r}"
        headers[name.lower()] = value.strip()
    pos = end + 4
    status = int(status_line.split(" ")[1])
    if status == 100:
        return Answer(status, headers, b""), pos
    length = 0 if head_only else int(headers["content-length"])
    assert len(sent) >= pos + length, "answer cut short"
    return Answer(status, headers, bytes(sent[pos:pos + length])), pos + length


async def _until(ready: Callable[[], bool], what: str) -> None:
    """Run the loop (an fsync thread hands back on it) until `ready()`; fail after 10 s."""
    for _ in range(10_000):
        if ready():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"still waiting: {what}")


@dataclass
class Outcome:
    sent: bytes  # all the server wrote back
    metrics: Metrics
    stats: StorageStats  # once every request was answered or lost


def _make_server(root: str, fsync: bool) -> tuple[HttpServer, DiskStorage, Metrics]:
    """On the running loop: the server a worker makes (server.py), over storage in `root`."""
    storage = DiskStorage(f"{root}/s", max_bytes=1 << 30, max_artifact_bytes=1 << 30, min_free_bytes=0,
                          fsync=fsync, memory_cache_bytes=1 << 20)
    storage.sync_in_batches(asyncio.get_running_loop())
    metrics = Metrics(storage)
    handler = CacheHandler(storage=storage, tokens=TokenStore(f"{root}/tokens"), metrics=metrics,
                           access_log=AccessLog("off"))
    return HttpServer(handler, idle_timeout=60, body_timeout=30), storage, metrics


def _reads(stream: bytes, cuts: list[int]) -> list[bytes]:
    ends = sorted({c for c in cuts if 0 < c < len(stream)}) + [len(stream)]
    return [stream[start:end] for start, end in zip([0, *ends], ends) if start < end]


def feed(root: str, stream: bytes, cuts: list[int], fsync: bool) -> Outcome:
    """`stream` into one in-process connection in reads ending at `cuts`; what was written back."""
    async def scenario() -> Outcome:
        server, storage, metrics = _make_server(root, fsync)
        conn, _other = server(), server()  # two connections: answers are held, as under load
        transport = RecordingTransport()
        conn.connection_made(transport)
        _other.connection_made(RecordingTransport())
        for data in _reads(stream, cuts):
            await _until(lambda: not transport.paused or transport.closed, "reading to resume")
            if transport.closed:
                break
            conn.data_received(data)
            server.write_held()
        await _until(lambda: transport.closed or not conn.waiting, "an fsync")
        server.write_held()
        conn.connection_lost(None)
        _other.connection_lost(None)
        storage.stop_syncing()
        stats = storage.stats()
        storage.close()
        return Outcome(bytes(transport.sent), metrics, stats)

    return run_on("uvloop", scenario)


def over_a_socket(root: str, stream: bytes, cuts: list[int], fsync: bool) -> Outcome:
    """`stream` over a real socket pair (the loop's own transport: flow control, sendfile), written
    in pieces ending at `cuts`, then half-closed; all that comes back until the server hangs up."""
    async def scenario() -> Outcome:
        loop = asyncio.get_running_loop()
        server, storage, metrics = _make_server(root, fsync)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        await loop.connect_accepted_socket(server, theirs)
        received = bytearray()

        async def receive() -> None:
            while chunk := await loop.sock_recv(ours, 1 << 20):
                received.extend(chunk)

        reader = loop.create_task(receive())
        try:
            async with asyncio.timeout(20):  # the server must never leave the client waiting
                for data in _reads(stream, cuts):
                    try:
                        await loop.sock_sendall(ours, data)
                    except (BrokenPipeError, ConnectionResetError):
                        break  # it hung up, as it may after a bad request: the rest is never read
                    await asyncio.sleep(0)
                else:
                    ours.shutdown(socket.SHUT_WR)
                await reader
        finally:
            reader.cancel()
            ours.close()
            for conn in list(server.connections):
                conn.abort()
            await asyncio.sleep(0)
            storage.stop_syncing()
            stats = storage.stats()
            storage.close()
        return Outcome(bytes(received), metrics, stats)

    return run_on("uvloop", scenario)


def expectations(reqs: list[Request]) -> tuple[dict[str, bytes], list[tuple[Request, Expected]], bool]:
    """The model's store and answers for `reqs`, and whether the tail after them is read."""
    store: dict[str, bytes] = {}
    expected: list[tuple[Request, Expected]] = []
    for req in reqs:
        expected.append((req, model(req, store)))
        if expected[-1][1].closes:
            break  # nothing after an answer that closes is read
    return store, expected, not expected or not expected[-1][1].closes


def check_answers(sent: bytes, expected: list[tuple[Request, Expected]], reached_tail: bool,
                  tail_status: int | None) -> None:
    pos = 0
    for req, want in expected:
        if want.continues:
            interim, pos = read_answer(sent, pos, head_only=False)
            assert interim.status == 100, (req, interim)
        # A HEAD answer carries Content-Length but no body bytes, whatever its status.
        answer, pos = read_answer(sent, pos, head_only=req.method == "HEAD")
        assert answer.status == want.status, (req, want, answer)
        if want.body is not None:
            assert answer.body == (b"" if req.method == "HEAD" else want.body), req
            assert int(answer.headers["content-length"]) == len(want.body), req
        if answer.status == 401:
            assert answer.headers["content-type"] == "text/plain"
        assert (answer.headers.get("connection") == "close") == want.closes, (req, answer.headers)
    rest = []
    while pos < len(sent):
        answer, pos = read_answer(sent, pos, head_only=False)
        if answer.status != 100:
            rest.append(answer)
    if not reached_tail:
        assert rest == []
    elif tail_status is not None:
        assert [a.status for a in rest] == [tail_status]
        assert rest[0].headers.get("connection") == "close"
    else:
        assert all(a.status < 500 for a in rest), rest


def write_tokens(root: str) -> None:
    with open(f"{root}/tokens", "w") as fh:
        fh.write("".join(token_line(f"t-{t}", scope, t) for t, scope in TOKENS.items()))


def stored(root: str) -> tuple[dict[str, bytes], StorageStats]:
    """What a fresh `DiskStorage` over the directory finds: each key's body, and its counts.
    Scrub must find nothing damaged."""
    reopened = DiskStorage(f"{root}/s", max_bytes=1 << 30, max_artifact_bytes=1 << 30, min_free_bytes=0,
                           fsync=False)
    try:
        found = {}
        for key in VALID_KEYS + ["newkey1", "newkey2", "newkey3"]:
            blob = reopened.get(key)
            if blob is not None:
                try:
                    found[key] = blob.inline if blob.inline is not None else os.pread(blob.fd, blob.size, blob.offset)
                finally:
                    blob.close()
        assert reopened.scrub().damaged == 0
        return found, reopened.stats()
    finally:
        reopened.close()


def check_storage(root: str, store: dict[str, bytes], live: StorageStats) -> None:
    """No upload file or reservation is left, a fresh look at the directory finds the model's
    entries, whole, and the server's own count of entries and bytes agrees with that look."""
    assert os.listdir(f"{root}/s/tmp") == []
    assert live.reserved_bytes == 0
    found, counts = stored(root)
    assert found == store and counts.entries == len(store)  # and nothing under another name
    assert (live.entries, live.bytes) == (counts.entries, counts.bytes)


def check_stream(deliver: Callable[[str, bytes, list[int], bool], Outcome], reqs: list[Request],
                 tail: tuple[bytes, int | None], cuts: list[int], fsync: bool) -> None:
    tail_bytes, tail_status = tail
    store, expected, reached_tail = expectations(reqs)
    with tempfile.TemporaryDirectory() as root:
        write_tokens(root)
        outcome = deliver(root, b"".join(r.raw() for r in reqs) + tail_bytes, cuts, fsync)
        check_answers(outcome.sent, expected, reached_tail, tail_status)
        assert outcome.metrics.rejected["internal_error"] == 0
        check_storage(root, store, outcome.stats)


# ------------------------------------------------------------------ the properties

_SETTINGS = settings(deadline=None, derandomize=SEARCH is None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_CUTS = st.lists(st.integers(0, 1 << 19), max_size=20)


@settings(_SETTINGS, max_examples=EXAMPLES)
@given(reqs=st.lists(requests(), max_size=12), tail=TAILS, cuts=_CUTS, fsync=st.booleans())
def test_any_stream_cut_anywhere_gets_the_models_answers_and_storage(reqs, tail, cuts, fsync):
    check_stream(feed, reqs, tail, cuts, fsync)


@settings(_SETTINGS, max_examples=max(EXAMPLES // 3, 1))
@given(reqs=st.lists(requests(big=True), max_size=8), tail=TAILS, cuts=_CUTS, fsync=st.booleans())
def test_the_same_over_a_real_socket_with_downloads_by_sendfile(reqs, tail, cuts, fsync):
    check_stream(over_a_socket, reqs, tail, cuts, fsync)


def test_an_answer_that_closes_is_not_reset_by_bytes_sent_behind_it():
    """Found by the test above, shrunk: closing a socket with unread bytes makes the kernel reset
    it, and the client's read of the answer fails. The server lingers instead."""
    first = Request("GET", "k1", "tok", close=True)
    check_stream(over_a_socket, [first, Request("GET", "k2", "tok")], (b"", None), [len(first.raw())], False)


# ------------------------------------------------------------ several connections at once

def interleaved(root: str, streams: list[bytes], schedule: list[tuple[int, int]],
                fsync: bool) -> tuple[list[bytes], Outcome]:
    """Each stream into its own in-process connection, `schedule` saying whose next piece arrives
    next and how long it is (a connection whose reading is paused waits its turn); then the rest of
    each, in turn. What each connection got back, and the outcome."""
    async def scenario() -> tuple[list[bytes], Outcome]:
        server, storage, metrics = _make_server(root, fsync)
        conns = [(server(), RecordingTransport()) for _ in streams]
        for conn, transport in conns:
            conn.connection_made(transport)
        offsets = [0] * len(streams)
        order = [(index % len(streams), size) for index, size in schedule]
        order += [(index, 1 << 30) for index in range(len(streams))]
        while order:
            index, size = order.pop(0)
            conn, transport = conns[index]
            if transport.closed or offsets[index] >= len(streams[index]):
                continue
            if transport.paused:
                if not any(not t.paused and not t.closed for _, t in conns):
                    await _until(lambda: not transport.paused or transport.closed, "reading to resume")
                order.append((index, size))
                await asyncio.sleep(0)
                continue
            piece = streams[index][offsets[index]:offsets[index] + size]
            offsets[index] += len(piece)
            conn.data_received(piece)
            server.write_held()
            await asyncio.sleep(0)
        await _until(lambda: all(t.closed or not c.waiting for c, t in conns), "an fsync")
        server.write_held()
        for conn, _ in conns:
            conn.connection_lost(None)
        storage.stop_syncing()
        stats = storage.stats()
        storage.close()
        return [bytes(t.sent) for _, t in conns], Outcome(b"", metrics, stats)  # sent: per connection, first

    return run_on("uvloop", scenario)


def winners_of(sent: bytes, reqs: list[Request], final: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Check one connection's answers against the model with each key either absent or holding
    what storage holds at the end (other connections may have stored it at any moment); return
    the (key, body) of each PUT answered 200."""
    pos = 0
    winners = []
    for req in reqs:
        candidates = [model(req, {}), model(req, {req.key: final.get(req.key, b"\0not stored")})]
        if req.method == "PUT" and req.expect and candidates[0].status == 200:
            # Absent when its head arrived (so 100 Continue), stored by another before its commit
            candidates.append(Expected(409, closes=req.close, continues=True))
        continued = sent.startswith(b"HTTP/1.1 100 ", pos)
        if continued:
            _, pos = read_answer(sent, pos, head_only=False)
        answer, pos = read_answer(sent, pos, head_only=req.method == "HEAD")
        closes = answer.headers.get("connection") == "close"

        def matches(want: Expected) -> bool:
            body_ok = want.body is None or answer.body == (b"" if req.method == "HEAD" else want.body)
            return (answer.status, closes, continued) == (want.status, want.closes, want.continues) and body_ok

        assert any(matches(want) for want in candidates), f"{req}\n got {answer}\n want one of {candidates}"
        if req.method == "PUT" and answer.status == 200:
            winners.append((req.key, req.body))
        if closes:
            break
    assert pos == len(sent), "answers after the connection closed"
    return winners


@settings(_SETTINGS, max_examples=max(EXAMPLES // 3, 1))
@given(lists=st.lists(st.lists(requests(), max_size=6), min_size=2, max_size=3),
       schedule=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3000)), max_size=40), fsync=st.booleans())
def test_connections_interleaved_agree_on_one_stored_body_per_key(lists, schedule, fsync):
    """Several connections PUT and GET the same few keys, their bytes interleaved: each key is
    stored by exactly one PUT answered 200 (the rest get 409), never a mix, and every GET that
    hits returns that body."""
    with tempfile.TemporaryDirectory() as root:
        write_tokens(root)
        sent, outcome = interleaved(root, [b"".join(r.raw() for r in reqs) for reqs in lists], schedule, fsync)
        assert outcome.metrics.rejected["internal_error"] == 0
        final, _ = stored(root)
        winners = [w for got, reqs in zip(sent, lists) for w in winners_of(got, reqs, final)]
        assert sorted(key for key, _ in winners) == sorted(final), "a key stored without one PUT answered 200"
        assert all(final[key] == body for key, body in winners)
        check_storage(root, final, outcome.stats)
