"""Driving a `Connection` without sockets: a transport that records what is written to it, and
an event loop to run a scenario on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cache_server.loops import loop_factory

T = TypeVar("T")


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.writes = 0
        self.closed = False
        self.paused = False  # a transport calls no data_received while reading is paused

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.sent += data
        self.writes += 1

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def run_on(kind: str, scenario: Callable[[], Awaitable[T]]) -> T:
    """`scenario()` on a new event loop of `kind` ("uvloop" or "asyncio"); its result."""
    loop = loop_factory(kind)()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()
