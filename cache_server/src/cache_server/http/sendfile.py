"""sendfile(2) of a file range to a connection, on either event loop.

asyncio's own loop implements `loop.sendfile`. uvloop does not (MagicStack/uvloop#228), and
copying through Python instead costs ~2.5x the CPU per GB (research/perf.md). So on uvloop
the kernel copies from the file to the socket here, the way asyncio does it: the caller has
paused reading, the transport's buffered bytes (the response head) go out first, then nothing
but sendfile writes to the socket until the body is sent. Readiness is watched on a dup() of
the socket, because libuv allows one watcher per descriptor and the transport holds it.
"""

from __future__ import annotations

import asyncio
import os

# One sendfile(2) call moves at most this much; the kernel's own cap is just under 2 GiB.
_MAX_CALL = 1 << 30


async def send_file(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, fd: int, offset: int,
                    count: int) -> None:
    """Send `count` bytes of `fd` from `offset`; raises OSError (or ConnectionError) if cut short."""
    if isinstance(loop, asyncio.BaseEventLoop):  # the standard library's loop: its own sendfile
        with open(fd, "rb", buffering=0, closefd=False) as fobj:
            await loop.sendfile(transport, fobj, offset, count)
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ConnectionError("connection has no socket")
    watch = os.dup(sock.fileno())
    try:
        while transport.get_write_buffer_size():
            await _writable(loop, watch)  # uvloop flushes its buffer at the end of each loop pass
        end = offset + count
        while offset < end:
            try:
                sent = os.sendfile(watch, fd, offset, min(end - offset, _MAX_CALL))
            except BlockingIOError:
                await _writable(loop, watch)
                continue
            if sent == 0:
                raise ConnectionError(f"file ended {end - offset} bytes early")
            offset += sent
    finally:
        os.close(watch)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    waiter = loop.create_future()
    loop.add_writer(fd, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
