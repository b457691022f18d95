"""HTTP/1.1 on an asyncio.BufferedProtocol, parsed by httptools (llhttp, in C).

Why not a framework: a cache hit is a few microseconds of storage work, so the
per-request cost of the HTTP layer decides small-artifact throughput. aiohttp's
request/response objects, tasks and stream readers cost ~60-100 us per request
here; this layer answers a small GET without creating a task or a future.

One `Connection` per socket. The parser calls back as bytes arrive; each request
becomes an `Exchange`. The handler (handler.py) decides what to answer; this
module owns the wire: ordering of pipelined requests, keep-alive, timeouts, flow
control, sendfile(2) for large bodies (sendfile.py), and blocking work in a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools

from ..auth import Proven
from ..namespaces import TRUSTED
from .sendfile import send_file

if TYPE_CHECKING:
    from ..storage.base import Blob, Upload
    from .handler import CacheHandler

MAX_HEADER_BYTES = 64 << 10
# After answering a request whose body is still coming, keep reading (and dropping) it this
# long before hanging up: closing with unread data makes the kernel send a reset, and the
# client would see "connection reset" instead of our answer (nginx's lingering close).
LINGER_S = 2.0
_SLOWEST_DOWNLOAD_BYTES_PER_S = 1 << 20
# Answers are held until the end of the loop pass (see `HttpServer.write_held`), but no more than
# this much per connection: beyond it the transport's own flow control must see the bytes.
_HOLD_MAX_BYTES = 64 << 10
# Requests read ahead of their answers, at most: past it the connection stops reading.
PIPELINE_MAX = 64
_RECV_BUFFER_BYTES = 256 << 10

_METHODS = {b"GET": "GET", b"PUT": "PUT", b"HEAD": "HEAD"}
# The request headers this server reads, by the length of their names: most headers (Host,
# Accept, Content-Type) are passed over on their length alone, without lower-casing the name.
_WANTED_HEADERS = {13: b"authorization", 14: b"content-length", 6: b"expect", 17: b"transfer-encoding"}
_STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()) for status in HTTPStatus}


class _HeadersTooLarge(Exception):
    pass


class _Unread:
    """Stands in for the parser once a request could not be parsed: later reads are dropped."""

    @staticmethod
    def feed_data(data: bytes | memoryview) -> None:
        pass


# Status line plus Date for every status, made again when the second changes: an answer's
# head then starts with one dict lookup.
_heads_second = -1
_date = b""
_heads: dict[int, bytes] = {}


def status_head(status: int) -> bytes:
    """Status line plus Date, without the blank line that ends the head."""
    global _heads_second, _date, _heads
    now = int(time.time())
    if now != _heads_second:
        _date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        _heads = {code: line + _date for code, line in _STATUS_LINES.items()}
        _heads_second = now
    return _heads.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status + _date


class Exchange:
    """One request and what is known of its answer; the access log's record too."""

    __slots__ = (
        "remote", "url", "method", "authorization", "content_length", "expect_continue", "chunked", "keep_alive",
        "started", "kind", "key", "namespace", "status", "token", "bytes_in", "bytes_out", "reason",
        "upload", "reply", "pending", "complete", "answered",
    )

    def __init__(self, started: float, remote: str | None) -> None:
        self.remote = remote
        self.url = b""
        self.method = ""
        self.authorization: bytes | None = None
        self.content_length: int | None = None
        self.expect_continue = False
        self.chunked = False
        self.keep_alive = True
        self.started = started
        self.kind = "other"  # route: cache | health | metrics | other
        self.key: str | None = None  # the cache key, only when it is valid
        self.namespace: str | None = TRUSTED  # the cache namespace (namespaces.py); None when not a valid name
        self.status: int | None = None
        self.token: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: str | None = None
        self.upload: Upload | None = None  # a PUT body being stored
        self.reply: tuple[int, str] | None = None  # a refused PUT: answered once its body is drained
        self.pending: list[bytes] | None = None  # body bytes that arrived while an earlier request was answered
        self.complete = False  # the whole request (body included) has been read
        self.answered = False


class HttpServer:
    """State shared by the connections of one listening server."""

    def __init__(self, handler: CacheHandler, *, idle_timeout: float, body_timeout: float,
                 first_byte_timeout: float = 10.0, max_connections: int = 10_000, max_per_address: int = 512) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.first_byte_timeout = first_byte_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.connections: set[Connection] = set()
        self.per_address: dict[str | None, int] = {}
        self.accepted = 0
        self.draining = False
        self.held: list[Connection] = []  # connections with answers to write at the end of this pass
        # How often an idle or receiving connection looks at its clock.
        self.tick = max(0.05, min(idle_timeout, body_timeout, first_byte_timeout))
        self.recv_buffer = memoryview(bytearray(_RECV_BUFFER_BYTES))

    def __call__(self) -> Connection:
        self.accepted += 1
        return Connection(self, self.accepted)

    def write_held(self) -> None:
        """Write the answers `Connection.write` held (connections listed in `held`), once this loop
        pass has read every ready socket.

        Why: a client waiting in epoll_wait is woken by each answer, and on a VM that wake-up (an
        inter-processor interrupt) costs more than the rest of a small request's kernel work.
        Answers written back to back find the client already awake; one write per pass and
        connection, not one per answer, is the same saving for pipelined requests. A 4 KiB PUT
        at 32 connections went from ~97 to ~70 us of server CPU (one process, no fsync).
        """
        held, self.held = self.held, []
        for conn in held:
            conn.flush()

    def admit(self, conn: Connection) -> bool:
        """Make room for a new connection within the caps (in all, and per client address): the
        longest-idle connection in the way is closed; with none idle, the new one is refused.
        Idle sockets held open by one client must not use up the file descriptors every client
        needs (Nx fails a build on a network error)."""
        count = self.per_address.get(conn.remote, 0) + 1
        self.per_address[conn.remote] = count
        self.connections.add(conn)
        if count > self.max_per_address and not self._close_longest_idle(conn, conn.remote):
            return False
        if len(self.connections) > self.max_connections and not self._close_longest_idle(conn, None):
            return False
        return True

    def _close_longest_idle(self, new: Connection, remote: str | None) -> bool:
        idle = [c for c in self.connections if c is not new and not c.busy and not c.closing
                and (remote is None or c.remote == remote)]
        if not idle:
            return False
        # uvloop's clock moves once per loop pass (milliseconds): ties go to the older connection.
        min(idle, key=lambda c: (c.last_io, c.number)).close()
        return True

    def forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            left = self.per_address.get(conn.remote, 1) - 1
            if left:
                self.per_address[conn.remote] = left
            else:
                self.per_address.pop(conn.remote, None)

    def busy_connections(self) -> int:
        return sum(1 for conn in self.connections if conn.busy)

    def start_draining(self) -> None:
        """Answer what is in flight with `Connection: close`; hang up idle connections now."""
        self.draining = True
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()

    async def wait_idle(self) -> None:
        while self.busy_connections():
            await asyncio.sleep(0.05)

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class Connection(asyncio.BufferedProtocol):
    def __init__(self, server: HttpServer, number: int = 0) -> None:
        self.server = server
        self.number = number  # order of acceptance
        self.handler = server.handler
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote: str | None = None
        self.parsing: Exchange | None = None  # the request whose bytes are arriving
        self.current: Exchange | None = None  # the request being answered
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting for `current`
        self.header_bytes = 0  # the head's URL and complete headers (the parser's callbacks)
        self.head_read_bytes = 0  # reads that began and ended inside the head (see data_received)
        self.last_io = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.spoke = False  # it has sent a byte
        self.waiting = False  # `current` waits on a sendfile or a thread
        self.write_paused = False
        self.write_paused_at = 0.0  # the loop time the transport's buffer went over its high-water mark
        self.must_close = False
        self.task: asyncio.Task[None] | None = None
        self.held: bytes | bytearray | None = None  # answers not yet given to the transport (HttpServer.write_held)
        self.proven = Proven()  # the token this connection last proved (handler, auth.py)
        self.refusal: tuple[int, str] | None = None  # for a bad request, once the answers before it are given

    @property
    def busy(self) -> bool:
        return self.parsing is not None or self.current is not None or bool(self.queue)

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if peer else None
        if self.server.draining:
            self.close()
            return
        if not self.server.admit(self):
            self.write(status_head(503) + b"Content-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
            self.close()
            return
        self.last_io = self.loop.time()
        self.timer = self.loop.call_at(self.last_io + self.server.tick, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()  # a sendfile: its own handler logs the abort
        elif self.current is not None and not self.waiting and not self.current.answered:
            self.handler.lost(self.current)
        for ex in (self.parsing, *self.queue):
            if ex is not None and ex is not self.current and ex.upload is not None:
                ex.upload.abort()
        self.queue.clear()

    # Reads go straight into the server's buffer rather than into a new bytes object per read:
    # one copy and one 256 KiB allocation fewer per read of an upload (a 64 MiB PUT took ~20%
    # less CPU). One buffer serves every connection because each read is parsed before the next,
    # and the parser hands on copies (bytes), never views of it.
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.recv_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.recv_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.closing:
            return
        self.last_io = self.loop.time()
        self.spoke = True
        parsing = self.parsing
        try:
            self.parser.feed_data(data)
            if parsing is not None and parsing is self.parsing and not parsing.method:
                # The whole read fell inside a head that is still incomplete. The parser keeps a
                # header it has not finished in memory and only calls `on_header` at its end, so
                # one endless header would otherwise grow until the head timeout.
                self.head_read_bytes += len(data)
                if self.head_read_bytes > MAX_HEADER_BYTES:
                    raise _HeadersTooLarge()
        except _HeadersTooLarge:
            self._refuse(431, "request head over 64 KiB")
        except httptools.HttpParserUpgrade:
            # An Upgrade/CONNECT request was answered as plain HTTP; nothing after it is HTTP/1.1.
            self.must_close = True
            if self.current is None:
                self.close()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge):
                self._refuse(431, "request head over 64 KiB")
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool:
        # A client may half-close once its request is sent: answer it, then close. A request
        # still incomplete can never complete: close, which aborts its upload.
        if self.current is not None and self.current.complete and self.parsing is None and not self.closing:
            self.must_close = True
            return True  # keep the transport open for writing
        return False

    # A client that sends requests and never reads the answers must not make the server hold them:
    # while the transport's buffer is over its high-water mark no new request is answered (they
    # queue, at most PIPELINE_MAX, and reading stops), and after --body-timeout of it the
    # connection is aborted, its buffer dropped.

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.loop.time()
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._advance()

    def _update_reading(self) -> None:
        if self.closing or self.transport is None:
            return
        if self.write_paused or self.waiting or len(self.queue) >= PIPELINE_MAX:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Send bytes behind any answer still held; held themselves unless this is the only connection."""
        held = self.held
        if held is None:
            if len(self.server.connections) == 1 or len(data) > _HOLD_MAX_BYTES:
                # Nothing could go out with it (holding would only add a pass), or too much to hold.
                if self.transport is not None:
                    self.transport.write(data)
                return
            self.held = data
            held_by_server = self.server.held
            if not held_by_server:
                self.loop.call_soon(self.server.write_held)
            held_by_server.append(self)
        else:
            # Pipelined answers: joined, so one write per pass carries them all; in a bytearray,
            # as a run of hundreds of small answers would make `bytes + bytes` copy quadratically.
            if type(held) is bytes:
                self.held = held = bytearray(held)
            held += data
            if len(held) > _HOLD_MAX_BYTES:
                self.flush()

    def flush(self) -> None:
        """Give held answers to the transport now (before a write that must follow them)."""
        held = self.held
        if held is None:
            return
        self.held = None  # still listed in HttpServer.held: flushing again then finds nothing
        if not self.closing and self.transport is not None:
            self.transport.write(held)

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.flush()
            self.closing = True
            self.transport.close()

    def _linger(self) -> None:
        if self.closing or self.transport is None:
            return
        self.flush()
        self.closing = True  # data_received drops whatever still arrives
        if self.timer is not None:
            self.timer.cancel()
        try:
            self.transport.write_eof()  # FIN after the answer; the client's EOF then closes us
        except (OSError, RuntimeError, NotImplementedError):
            self.transport.close()
            return
        self.transport.resume_reading()
        self.timer = self.loop.call_later(LINGER_S, self.transport.close)

    def abort(self) -> None:
        self.held = None
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # --------------------------------------------------------- parser calls

    def on_message_begin(self) -> None:
        self.parsing = Exchange(time.perf_counter(), self.remote)
        self.header_bytes = self.head_read_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.header_bytes += len(url)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise _HeadersTooLarge()
        self.parsing.url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        # At least what the line took on the wire (`name:value\r\n`): 40,000 empty headers are a
        # 156 KiB head even though their names and values add up to little.
        self.header_bytes += len(name) + len(value) + 3
        if self.header_bytes > MAX_HEADER_BYTES:
            raise _HeadersTooLarge()
        size = len(name)
        if size in _WANTED_HEADERS and name.lower() == _WANTED_HEADERS[size]:
            ex = self.parsing
            assert ex is not None
            if size == 13:
                ex.authorization = value
            elif size == 14:
                ex.content_length = int(value)  # llhttp checked: one run of digits
            elif size == 6:
                ex.expect_continue = value.lower() == b"100-continue"
            else:
                ex.chunked = True

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        method = self.parser.get_method()
        ex.method = _METHODS.get(method) or method.decode("ascii", "replace")
        ex.keep_alive = self.parser.should_keep_alive()
        if self.current is None and not self.closing and not self.write_paused and not self.queue:
            # `_start`, for a request with no body read yet and no pending bytes: every request's path
            self.current = ex
            try:
                self.handler.begin(self, ex)
            except Exception:
                self.handler.internal_error(self, ex)
        else:
            ex.pending = []
            self.queue.append(ex)
            if len(self.queue) >= PIPELINE_MAX:
                self._update_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        if ex.pending is not None:
            ex.pending.append(body)
        elif not ex.answered:
            self.handler.body(self, ex, body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.parsing = None
        ex.complete = True
        if ex is self.current and not ex.answered:
            try:  # `_complete`, spelled out: this is every request's path
                self.handler.complete(self, ex)
            except Exception:
                self.handler.internal_error(self, ex)

    # ------------------------------------------------------------- answering

    def _start(self, ex: Exchange) -> None:
        self.current = ex
        try:
            self.handler.begin(self, ex)
        except Exception:
            self.handler.internal_error(self, ex)
        pending, ex.pending = ex.pending, None
        if pending and not ex.answered:
            for chunk in pending:
                self.handler.body(self, ex, chunk)
        if ex.complete and not ex.answered:
            self._complete(ex)

    def _complete(self, ex: Exchange) -> None:
        try:
            self.handler.complete(self, ex)
        except Exception:
            self.handler.internal_error(self, ex)

    def _advance(self) -> None:
        while self.current is None and self.queue and not self.closing and not self.write_paused:
            self._start(self.queue.popleft())
        if self.refusal is not None and self.current is None and not self.closing:
            status, message = self.refusal
            self.refusal = None
            self._refuse(status, message)
        self._update_reading()

    def respond(self, ex: Exchange, head: bytes, body: bytes = b"", *, close: bool = False) -> None:
        """Send a whole answer. `head` is `status_head()` plus header lines."""
        close = close or self._closes_after(ex)
        if not self.closing and self.transport is not None:
            self.write(head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body)
        self._finish(ex, close)

    def _closes_after(self, ex: Exchange) -> bool:
        return not ex.keep_alive or self.must_close or self.server.draining

    def _finish(self, ex: Exchange, close: bool) -> None:
        ex.answered = True
        self.handler.finished(ex)
        if ex is self.current:
            self.current = None
        if close:
            # Lingering even after a whole request: a client may have sent more behind it (a
            # pipelined request, bytes after `Connection: close`), and closing with those unread
            # makes the kernel send a reset, which can destroy this answer before it is read.
            self._linger()
        else:
            self.last_io = self.loop.time()

    def send_continue(self) -> None:
        if self.transport is not None and not self.closing:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.flush()  # the client waits for it before sending the body

    def send_file(self, ex: Exchange, head: bytes, blob: Blob) -> None:
        """Answer with `blob`'s bytes by sendfile(2), off the parser's call stack."""
        self.waiting = True
        self._update_reading()
        self.task = self.loop.create_task(self._send_file(ex, head, blob))
        self.task.add_done_callback(lambda task: self._send_file_done(task, ex, blob))

    def _send_file_done(self, task: asyncio.Task[None], ex: Exchange, blob: Blob) -> None:
        blob.close()
        if task.cancelled():  # cancelled before its first step: the client left in the same loop pass
            self.task = None
            self.waiting = False
            ex.reason = "download aborted: client went away"
            self.handler.sent(ex, False)
            self._finish(ex, True)

    async def _send_file(self, ex: Exchange, head: bytes, blob: Blob) -> None:
        transport = self.transport
        assert transport is not None
        ok = False
        close = self._closes_after(ex)
        try:
            self.flush()
            transport.write(head + (b"Connection: close\r\n\r\n" if close else b"\r\n"))
            limit = self.server.body_timeout + blob.size / _SLOWEST_DOWNLOAD_BYTES_PER_S
            async with asyncio.timeout(limit):
                await send_file(self.loop, transport, blob.fd, blob.offset, blob.size)
            ok = True
        except (TimeoutError, OSError, RuntimeError, asyncio.CancelledError) as exc:
            # Headers are gone; hanging up is the only honest signal left for a short body.
            ex.reason = f"download aborted: {type(exc).__name__}"
            self.abort()
        finally:
            blob.close()
            self.task = None
            self.waiting = False
        if ok:
            ex.bytes_out = blob.size
        self.handler.sent(ex, ok)
        self._finish(ex, close or not ok)
        self._advance()

    def wait_for(self, ex: Exchange, start: Callable[[Callable[[BaseException | None], None]], None],
                 then: Callable[[Connection, Exchange, BaseException | None], None]) -> None:
        """Answer `ex` later: `start(done)` begins outside work (an fsync) that calls `done(error)`
        on the loop; then `then(conn, ex, error)` answers. Never cancelled halfway: work that has
        started finishes whole even if the client hangs up."""
        self.waiting = True
        self._update_reading()
        start(lambda error: self._resume(ex, error, then))

    def _resume(self, ex: Exchange, error: BaseException | None,
                then: Callable[[Connection, Exchange, BaseException | None], None]) -> None:
        self.waiting = False
        try:
            then(self, ex, error)
        except Exception:
            self.handler.internal_error(self, ex)
        self._advance()

    # -------------------------------------------------------------- timeouts

    def _on_timer(self) -> None:
        # One timer per connection, re-armed only when it fires: cheaper than a timer per read.
        self.timer = None
        if self.closing:
            return
        now = self.loop.time()
        if self.write_paused and not self.waiting:
            # Its client reads none of what it is sent (a close would wait for that forever); until
            # then nothing else times out: nothing is read, and answers wait for room.
            due = self.write_paused_at + self.server.body_timeout
            if now >= due:
                self.abort()
            else:
                self.timer = self.loop.call_at(min(due, now + self.server.tick), self._on_timer)
            return
        parsing = self.parsing
        if parsing is not None and not parsing.method and time.perf_counter() - parsing.started >= self.server.body_timeout:
            # A head trickled in a byte at a time (slowloris) gets no longer than a stalled body.
            self._hang_up_with_408()
            return
        idle = not self.busy
        if idle:
            # A connection that never sent a byte gets the short timeout: idle sockets opened and
            # left would otherwise each hold a descriptor for the whole idle timeout.
            timeout = self.server.idle_timeout if self.spoke else min(self.server.idle_timeout,
                                                                      self.server.first_byte_timeout)
        else:
            timeout = self.server.body_timeout
        due = self.last_io + timeout
        if self.waiting or now < due:  # waiting: sendfile and commit have limits of their own
            self.timer = self.loop.call_at(now + self.server.tick if self.waiting else min(due, now + self.server.tick),
                                           self._on_timer)
            return
        if idle:
            self.close()
        elif self.current is not None and not self.current.answered:
            self.handler.timed_out(self, self.current)
        else:
            self._hang_up_with_408()

    def _hang_up_with_408(self) -> None:
        """For a request too slow to have become an exchange the handler answers."""
        self.write(status_head(408) + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        self.close()

    def _refuse(self, status: int, message: str) -> None:
        """A request we cannot parse: answer it, then hang up. Requests before it that are still
        being answered (a download, an fsync) and queued behind those are answered first; nothing
        after it is read. (RFC 9112 9.6: bytes after a request with `Connection: close` are not
        processed either; they end up here.)"""
        if self.current is not None and self.waiting:
            self.parser = _Unread()  # type: ignore[assignment]
            self.refusal = (status, message)
            unfinished = self.parsing
            self.parsing = None
            if unfinished is not None:
                if unfinished in self.queue:
                    self.queue.remove(unfinished)  # its head was read, its body never will be
                if unfinished.upload is not None:
                    unfinished.upload.abort()
                    unfinished.upload = None
            return
        ex = self.current or self.parsing or Exchange(time.perf_counter(), self.remote)
        self.parsing = None
        if ex.upload is not None:
            ex.upload.abort()
            ex.upload = None
        self.handler.refuse(self, ex, status, message)
