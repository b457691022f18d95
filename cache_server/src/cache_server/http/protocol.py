"""HTTP/1.1 on an asyncio.BufferedProtocol, parsed by httptools (llhttp, in C).

Why not a framework: a cache hit is a few microseconds of storage work, so the
per-request cost of the HTTP layer decides small-artifact throughput. aiohttp's
request/response objects, tasks and stream readers cost ~60-100 us per request
here; this layer answers a small GET without creating a task or a future.

One `Connection` per socket. The parser calls back as bytes arrive; each request
becomes a `Request`, which the application (handler.py) answers through the `Cycle` it
starts for it (exchange.py: the whole interface between the two). This module owns the
wire: ordering of pipelined requests, keep-alive, timeouts, flow control, sendfile(2) for
large bodies (sendfile.py), and waiting on outside work (an fsync).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from ..auth import Proven
from .exchange import Request
from .heads import status_head
from .sendfile import send_file

if TYPE_CHECKING:
    from ..storage.base import Blob
    from .connections import HttpServer

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

_METHODS = {b"GET": "GET", b"PUT": "PUT", b"HEAD": "HEAD"}
# The request headers this server reads, by the length of their names: most headers (Host,
# Accept, Content-Type) are passed over on their length alone, without lower-casing the name.
_WANTED_HEADERS = {13: b"authorization", 14: b"content-length", 6: b"expect", 17: b"transfer-encoding"}


class _HeadersTooLarge(Exception):
    """The head passed MAX_HEADER_BYTES."""


class _Unread:
    """Stands in for the parser once a request could not be parsed: later reads are dropped."""

    feed_data = staticmethod(lambda data: None)


class Connection(asyncio.BufferedProtocol):
    """One client socket: its requests in order, each answered through the application's cycle."""

    def __init__(self, server: HttpServer, number: int = 0) -> None:
        self.server = server
        self.number = number  # order of acceptance
        self.handler = server.handler
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote: str | None = None
        self.parsing: Request | None = None  # the request whose bytes are arriving
        self.current: Request | None = None  # the request being answered
        self.queue: deque[Request] = deque()  # pipelined requests waiting for `current`
        self.header_bytes = 0  # the head's URL and complete headers (the parser's callbacks)
        self.head_read_bytes = 0  # reads that began and ended inside the head (see data_received)
        self.last_io = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.spoke = False  # it has sent a byte
        self.waiting = False  # `current` waits on a sendfile or a thread
        self.starting = False  # inside `wait_for`'s start: its work may finish at once
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
        current = self.current
        if self.task is not None:
            self.task.cancel()  # a sendfile: its own handler logs the abort
        elif current is not None and not self.waiting and current.cycle is not None:
            current.cycle.lost()
        for req in (self.parsing, *self.queue):
            if req is not None and req is not current and req.cycle is not None:
                req.cycle.lost()  # answered early while its body was still coming
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


    def on_message_begin(self) -> None:
        self.parsing = Request(time.perf_counter(), self.remote)
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
            req = self.parsing
            assert req is not None
            if size == 13:
                req.authorization = value
            elif size == 14:
                req.content_length = int(value)  # llhttp checked: one run of digits
            elif size == 6:
                req.expect_continue = value.lower() == b"100-continue"
            else:
                req.chunked = True

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        method = self.parser.get_method()
        req.method = _METHODS.get(method) or method.decode("ascii", "replace")
        req.keep_alive = self.parser.should_keep_alive()
        if self.current is None and not self.closing and not self.write_paused and not self.queue:
            self._start(req)
        else:
            req.pending = []
            self.queue.append(req)
            if len(self.queue) >= PIPELINE_MAX:
                self._update_reading()

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        if req.pending is not None:
            req.pending.append(body)
        elif not req.answered:
            req.cycle.body(body)  # type: ignore[union-attr]  # started: it is not queued

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        self.parsing = None
        req.complete = True
        if req is self.current and not req.answered:
            self._complete(req)


    def _start(self, req: Request) -> None:
        """Hand a request to the application; a queued one with what arrived while it waited."""
        self.current = req
        cycle = self.handler.start(self, req)
        pending, req.pending = req.pending, None
        if pending is None:  # read just now: no body yet
            return
        for chunk in pending:
            if req.answered:
                break
            cycle.body(chunk)
        if req.complete and not req.answered:
            self._complete(req)

    def _complete(self, req: Request) -> None:
        cycle = req.cycle
        assert cycle is not None
        try:
            cycle.complete()
        except Exception:
            cycle.failed()

    def _advance(self) -> None:
        while self.current is None and self.queue and not self.closing and not self.write_paused:
            self._start(self.queue.popleft())
        if self.refusal is not None and self.current is None and not self.closing:
            status, message = self.refusal
            self.refusal = None
            self._refuse(status, message)
        self._update_reading()

    def respond(self, req: Request, head: bytes, body: bytes = b"", *, close: bool = False) -> None:
        """Send a whole answer. `head` is `status_head()` plus header lines."""
        close = close or self._closes_after(req)
        if not self.closing and self.transport is not None:
            self.write(head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body)
        self._finish(req, close, None)

    def _closes_after(self, req: Request) -> bool:
        return not req.keep_alive or self.must_close or self.server.draining

    def _finish(self, req: Request, close: bool, aborted: str | None) -> None:
        req.answered = True
        cycle, req.cycle = req.cycle, None  # the two refer to each other: freed now, not by the GC
        cycle.done(aborted)  # type: ignore[union-attr]  # only a started request is answered
        if req is self.current:
            self.current = None
        if close:
            # Lingering even after a whole request: a client may have sent more behind it (pipelined,
            # or after `Connection: close`), and closing with it unread resets, losing this answer.
            self._linger()
        else:
            self.last_io = self.loop.time()

    def send_continue(self) -> None:
        if self.transport is not None and not self.closing:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # flushed: the client waits for it
            self.flush()

    def send_file(self, req: Request, head: bytes, blob: Blob) -> None:
        """Answer with `blob`'s bytes by sendfile(2), off the parser's call stack."""
        self.waiting = True
        self._update_reading()
        self.task = self.loop.create_task(self._send_file(req, head, blob))
        self.task.add_done_callback(lambda task: self._send_file_done(task, req, blob))

    def _send_file_done(self, task: asyncio.Task[None], req: Request, blob: Blob) -> None:
        blob.close()
        if task.cancelled():  # cancelled before its first step: the client left in the same loop pass
            self.task = None
            self.waiting = False
            self._finish(req, True, "download aborted: client went away")

    async def _send_file(self, req: Request, head: bytes, blob: Blob) -> None:
        transport = self.transport
        assert transport is not None
        aborted = None
        close = self._closes_after(req)
        try:
            self.flush()
            transport.write(head + (b"Connection: close\r\n\r\n" if close else b"\r\n"))
            limit = self.server.body_timeout + blob.size / _SLOWEST_DOWNLOAD_BYTES_PER_S
            async with asyncio.timeout(limit):
                await send_file(self.loop, transport, blob.fd, blob.offset, blob.size)
        except (TimeoutError, OSError, RuntimeError, asyncio.CancelledError) as exc:
            # Headers are gone; hanging up is the only honest signal left for a short body.
            aborted = f"download aborted: {type(exc).__name__}"
            self.abort()
        finally:
            blob.close()
            self.task = None
            self.waiting = False
        self._finish(req, close or aborted is not None, aborted)
        self._advance()

    def wait_for(self, req: Request, start: Callable[[Callable[[BaseException | None], None]], None],
                 then: Callable[[BaseException | None], None]) -> None:
        """Answer `req` later: `start(done)` begins outside work (an fsync) that calls `done(error)`
        on the loop; then `then(error)` answers. Never cancelled halfway: work that has started
        finishes whole even if the client hangs up."""
        self.waiting = True
        self.starting = True
        try:
            start(lambda error: self._resume(req, error, then))
        except BaseException:
            self.waiting = False
            raise
        finally:
            self.starting = False
        if self.waiting:  # not done at once (an fsync): nothing more is read until it is
            self._update_reading()

    def _resume(self, req: Request, error: BaseException | None, then: Callable[[BaseException | None], None]) -> None:
        self.waiting = False
        try:
            then(error)
        except Exception:
            req.cycle.failed()  # type: ignore[union-attr]  # a started request
        if not self.starting:  # done later: requests read meanwhile wait in the queue
            self._advance()


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
            self.current.cycle.timed_out()  # type: ignore[union-attr]  # current: started
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
                if unfinished.cycle is not None:
                    unfinished.cycle.lost()
            return
        req = self.current or self.parsing or Request(time.perf_counter(), self.remote)
        self.parsing = None
        self.handler.refuse(self, req, status, message)
