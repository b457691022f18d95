"""Which event loop runs a server process (`--event-loop`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop by default: asyncio's own loop is about a sixth of a small request's CPU."""
    if kind == "uvloop":
        import uvloop  # only when chosen, so `--event-loop asyncio` runs without it loaded

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, None], kind: str) -> None:
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        runner.run(main)
