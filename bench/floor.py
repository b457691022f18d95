#!/usr/bin/env python3
"""py-floor: the least a Python cache server on uvloop + httptools does per request.

A reference for bench/cachebench.py (`--servers ...,py-floor`), not a server to deploy. It
answers the Nx cache API with nothing but what every conformant server must do: parse the
request (httptools), compare the bearer token, check the key, and for a PUT write the body to
a temporary file, link it to its final name (409 when that exists) and unlink the temporary
name; a GET is answered from a dict of the first bodies it stored, from a set of the keys it
stored (a miss), or read from disk. No fsync, checksum, size cap, eviction, access log,
metrics, timeouts or pipelining order.

What it measures: the cost of the Python HTTP stack the cache server is built on, so that
a 4 KiB cell's ratio to nginx can be read against the ceiling of that stack on this machine.

    python bench/floor.py --port 3399 --storage DIR --token TOKEN [--processes 2]

--processes N forks N copies on one SO_REUSEPORT port, as the cache server's `--workers` does.
Each copy knows only what it stored itself, so there a GET it cannot answer from memory looks
on disk (an open that fails is the miss).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import time
from email.utils import formatdate

import httptools
import uvloop

_NAMES = itertools.count()
_PROCESS = ""  # this process's part of temporary names (serve); copies on one port must not collide
_MEMORY_ENTRIES = 4096  # the preloaded entries fit; PUT cells' bodies do not pile up in memory


class Floor(asyncio.Protocol):
    def __init__(self, storage: str, bearer: bytes, memory: dict[bytes, bytes], index: set[bytes] | None) -> None:
        self.storage = storage
        self.bearer = bearer
        self.memory = memory
        self.index = index
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.authorization = b""
        self.body: list[bytes] = []
        self.second = -1
        self.date = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 13 and name.lower() == b"authorization":
            self.authorization = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        authorized, self.authorization = self.authorization == self.bearer, b""
        key = self.url[10:]
        if not authorized:
            self.answer(b"401 Unauthorized", b"Content-Type: text/plain\r\n", b"unauthorized")
        elif not (self.url.startswith(b"/v1/cache/") and key.isalnum() and len(key) <= 128):
            self.answer(b"400 Bad Request", b"", b"")
        elif self.parser.get_method() == b"PUT":
            self.put(key, body)
        else:
            self.get(key)

    def put(self, key: bytes, body: bytes) -> None:
        name = key.decode()
        tmp = f"{self.storage}/tmp/{name}.{_PROCESS}{next(_NAMES)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, body)
            os.link(tmp, f"{self.storage}/e/{name}")
        except FileExistsError:
            self.answer(b"409 Conflict", b"", b"")
            return
        finally:
            os.close(fd)
            os.unlink(tmp)
        if self.index is not None:
            self.index.add(key)
        if len(body) <= 64 << 10 and len(self.memory) < _MEMORY_ENTRIES:
            self.memory[key] = body
        self.answer(b"200 OK", b"", b"")

    def get(self, key: bytes) -> None:
        body = self.memory.get(key)
        if body is None:
            if self.index is not None and key not in self.index:
                self.answer(b"404 Not Found", b"", b"")
                return
            try:
                with open(f"{self.storage}/e/{key.decode()}", "rb") as fh:
                    body = fh.read()
            except FileNotFoundError:
                self.answer(b"404 Not Found", b"", b"")
                return
        self.answer(b"200 OK", b"Content-Type: application/octet-stream\r\n", body)

    def answer(self, status: bytes, headers: bytes, body: bytes) -> None:
        now = int(time.time())
        if now != self.second:
            self.second, self.date = now, b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 " + status + b"\r\n" + self.date + headers
                             + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def serve(port: int, storage: str, token: str, alone: bool) -> None:
    global _PROCESS
    _PROCESS = f"{os.getpid()}."
    loop = asyncio.get_running_loop()
    memory: dict[bytes, bytes] = {}
    # What it stored since it started, so that a miss needs no look on disk; only when no other
    # process stores beside it.
    index: set[bytes] | None = set() if alone else None
    bearer = b"Bearer " + token.encode()
    server = await loop.create_server(lambda: Floor(storage, bearer, memory, index), "127.0.0.1", port,
                                      reuse_port=not alone)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    for sub in ("tmp", "e"):
        os.makedirs(os.path.join(args.storage, sub), exist_ok=True)
    if args.processes == 1:
        uvloop.run(serve(args.port, args.storage, args.token, alone=True))
        return
    children = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(args.port, args.storage, args.token, alone=False))
            os._exit(0)
        children.append(pid)

    def stop_children(signum: int, frame: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_children)
    for pid in children:
        os.waitpid(pid, 0)  # resumed after the handler (PEP 475)


if __name__ == "__main__":
    main()
