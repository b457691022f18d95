"""The seam between the wire (protocol.py) and the cache (handler.py).

The protocol parses a request into a `Request` and, once its head is read, hands it to the
application (`Application.start`), which returns the `Cycle` that answers it. From then on the
protocol tells the cycle what happens to the request (body bytes, the end of it, a client
gone or stalled, the answer written); the cycle answers through the `Connection` it was given
(`respond`, `send_file`, `send_continue`, `wait_for`). Each request gets one cycle, as
uvicorn's httptools protocol hands one request-response cycle to an ASGI application.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .protocol import Connection


class Request:
    """One request as read from the wire, and where its answer stands."""

    __slots__ = ("remote", "url", "method", "authorization", "content_length", "expect_continue", "chunked",
                 "keep_alive", "started", "pending", "complete", "answered", "cycle")

    def __init__(self, started: float, remote: str | None) -> None:
        self.remote = remote
        self.url = b""
        self.method = ""
        self.authorization: bytes | None = None
        self.content_length: int | None = None
        self.expect_continue = False
        self.chunked = False
        self.keep_alive = True
        self.started = started  # time.perf_counter() at its first byte
        self.pending: list[bytes] | None = None  # body bytes that arrived while an earlier request was answered
        self.complete = False  # the whole request (body included) has been read
        self.answered = False
        self.cycle: Cycle | None = None  # once started


class Cycle(Protocol):
    """What answers one request. Every call comes from the event loop."""

    def body(self, chunk: bytes) -> None:
        """Body bytes, in order (none after the request was answered)."""

    def complete(self) -> None:
        """The whole request has been read: answer now, or start what answers later."""

    def lost(self) -> None:
        """The connection is gone (the client hung up, or it was aborted); idempotent."""

    def timed_out(self) -> None:
        """No body bytes for the body timeout: answer and close."""

    def failed(self) -> None:
        """A call into this cycle raised (a bug): answer what the client can live with."""

    def done(self, aborted: str | None) -> None:
        """The answer was written (`aborted`: None), or a file answer was cut off (why)."""


class Application(Protocol):
    def start(self, conn: Connection, request: Request) -> Cycle:
        """A request's head is read: its cycle, set as `request.cycle` before anything else, as it
        may answer at once (a refused PUT). Never raises: a bug inside is answered by the
        cycle's `failed`."""

    def refuse(self, conn: Connection, request: Request, status: int, message: str) -> None:
        """A request that cannot be parsed (or is too large to): answer `status` and close."""
