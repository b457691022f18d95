"""HTTP transport: parse the route, authenticate, call storage, map errors once.

Every answer is chosen for what the Nx 24 client tolerates (research/nx-cache.md):
GET answers only 200 or 404 once authenticated (a damaged entry or a read error
is a miss); PUT answers 200, 409 or 403 whenever the request itself was valid,
so a sick disk never fails a build; 401 carries `Content-Type: text/plain`
exactly. A rejected PUT body is drained before answering (Nx does not read an
early answer), and every body read has an idle timeout so nothing hangs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.web_request import BaseRequest

from .. import __version__
from ..auth import Identity, TokenStore
from ..storage.base import Storage
from ..storage.disk import is_valid_key
from ..storage.errors import StorageError

if TYPE_CHECKING:
    from ..accesslog import AccessLog
    from ..metrics import Metrics

log = logging.getLogger("cache_server.http")

_OCTET = "application/octet-stream"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_CACHE_PREFIX = "v1/cache/"
# A rejected PUT is read to the end so the client sees our answer, unless that is unreasonable.
_DRAIN_CAP_UNAUTHENTICATED = 64 << 20
_SLOWEST_DOWNLOAD_BYTES_PER_S = 1 << 20
_ERROR_RECENT_S = 600.0


class _BodyTimeout(Exception):
    pass


class _Record:
    """What the access log says about one request."""

    __slots__ = ("key", "status", "token", "bytes_in", "bytes_out", "reason")

    def __init__(self, key: str | None) -> None:
        self.key = key  # the cache key, only when it is valid
        self.status: int | None = None
        self.token: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: str | None = None

    def answer(self, response: web.StreamResponse) -> web.StreamResponse:
        self.status = response.status
        return response


def _text(status: int, message: str, *, close: bool = False) -> web.Response:
    # Exactly "text/plain": Nx rejects a 401 whose type carries a charset.
    response = web.Response(status=status, body=message.encode(), headers={"Content-Type": "text/plain"})
    if close:
        response.force_close()
    return response


class CacheHandler:
    """The request handler of the low-level aiohttp server (no router, no middleware)."""

    def __init__(
        self,
        *,
        storage: Storage,
        tokens: TokenStore,
        metrics: Metrics,
        access_log: AccessLog,
        url_prefix: str = "",
        body_timeout: float = 30.0,
    ) -> None:
        self.storage = storage
        self.tokens = tokens
        self.metrics = metrics
        self.access_log = access_log
        self.body_timeout = body_timeout
        self.started = time.time()
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._prefix = url_prefix.strip("/") + "/" if url_prefix.strip("/") else ""

    # ---------------------------------------------------------------- routing

    def _route(self, raw_path: str) -> tuple[str, str]:
        """('cache', key) | ('health'|'metrics'|'other', '')."""
        path = raw_path.split("?", 1)[0].lstrip("/")  # Nx turns a trailing slash in the URL into '//v1/...'
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :].lstrip("/")
        if path.startswith(_CACHE_PREFIX):
            return "cache", path[len(_CACHE_PREFIX) :]
        if path in ("health", "metrics"):
            return path, ""
        return "other", ""

    async def wait_idle(self) -> None:
        """Return once no request is in flight (used to drain on SIGTERM)."""
        await self._idle.wait()

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        self.in_flight += 1
        self._idle.clear()
        try:
            response = await self._handle(request)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
        if self.draining:
            response.force_close()  # keep-alive clients reconnect to the next instance
        if response.keep_alive is False and not response.prepared and not request.content.is_eof():
            # Answer, then hang up at once: aiohttp would otherwise linger for seconds reading
            # a body we have refused (oversized, stalled, or never coming after Expect).
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        kind, key = self._route(request.raw_path)
        method = request.method
        rec = _Record(key if kind == "cache" and is_valid_key(key) else None)
        try:
            if kind == "cache":
                if method == "GET" or method == "HEAD":
                    response = await self._get(request, key, rec)
                elif method == "PUT":
                    response = await self._put(request, key, rec)
                else:
                    response = rec.answer(_text(405, "method not allowed: use GET or PUT"))
                    response.headers["Allow"] = "GET, HEAD, PUT"
            elif kind == "health" and method in ("GET", "HEAD"):
                response = rec.answer(self._health())
            elif kind == "metrics" and method in ("GET", "HEAD"):
                response = rec.answer(web.Response(body=self.metrics.render(), headers={"Content-Type": _PROMETHEUS}))
            else:
                response = rec.answer(_text(404, "not found: the cache API is PUT/GET /v1/cache/{hash}"))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            # A bug must not fail the user's build: Nx treats any GET answer but 200/404, and any
            # PUT answer but 200/403/409, as fatal. Log it loudly and answer a miss / "not stored".
            log.exception("internal error on %s %s", method, kind)
            self.metrics.reject("internal_error")
            if kind == "cache" and method == "PUT":
                response = rec.answer(_text(403, "not stored: internal error", close=True))
            elif kind == "cache":
                response = rec.answer(web.Response(status=404))
            else:
                response = rec.answer(_text(500, "internal error"))
        finally:
            elapsed = time.perf_counter() - started
            if kind == "cache":
                self.metrics.latency["PUT" if method == "PUT" else "GET"].observe(elapsed)
            if self.access_log.enabled:
                self.access_log.write(
                    remote=request.remote, method=method, route=kind,
                    key=rec.key,
                    status=rec.status, ms=elapsed * 1000, token=rec.token,
                    bytes_in=rec.bytes_in, bytes_out=rec.bytes_out, reason=rec.reason,
                )
        return response

    # -------------------------------------------------------------------- GET

    def _authenticate(self, request: BaseRequest, rec: _Record) -> Identity | None:
        identity = self.tokens.authenticate(request.headers.get("Authorization"))
        rec.token = identity.name if identity else None
        if identity is None:
            self.metrics.reject("unauthorized")
        return identity

    async def _get(self, request: BaseRequest, key: str, rec: _Record) -> web.StreamResponse:
        if self._authenticate(request, rec) is None:
            return rec.answer(_text(401, "missing or unknown cache token (NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN)"))
        if rec.key is None:
            self.metrics.reject("bad_key")
            return rec.answer(_text(400, "bad cache hash: letters and digits only, at most 128"))
        blob = self.storage.get(key)
        if blob is None:
            self.metrics.misses += 1
            return rec.answer(web.Response(status=404))
        self.metrics.hits += 1
        if request.method == "HEAD":
            blob.close()
            head = web.StreamResponse(headers={"Content-Type": _OCTET})
            head.content_length = blob.size
            return rec.answer(head)
        if blob.inline is not None:
            rec.bytes_out = blob.size
            self.metrics.bytes_out += blob.size
            return rec.answer(web.Response(body=blob.inline, headers={"Content-Type": _OCTET}))
        try:
            response = web.StreamResponse(headers={"Content-Type": _OCTET})
            response.content_length = blob.size
            rec.status = 200
            await response.prepare(request)
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client went away")
            with open(blob.fd, "rb", buffering=0, closefd=False) as fobj:
                limit = self.body_timeout + blob.size / _SLOWEST_DOWNLOAD_BYTES_PER_S
                await asyncio.wait_for(
                    asyncio.get_running_loop().sendfile(transport, fobj, blob.offset, blob.size), limit
                )
            await response.write_eof()
        except (asyncio.TimeoutError, OSError) as exc:
            # Headers are gone; closing is the only honest signal left for a short body.
            rec.reason = f"download aborted: {type(exc).__name__}"
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("download aborted") from None
        finally:
            blob.close()
        rec.bytes_out = blob.size
        self.metrics.bytes_out += blob.size
        return response

    # -------------------------------------------------------------------- PUT

    async def _put(self, request: BaseRequest, key: str, rec: _Record) -> web.StreamResponse:
        length = request.content_length
        expect_continue = request.headers.get("Expect", "").lower() == "100-continue"
        identity = self._authenticate(request, rec)
        if identity is None:
            return await self._reject(request, rec, 401, "missing or unknown cache token", length, expect_continue,
                                      drain_cap=_DRAIN_CAP_UNAUTHENTICATED)
        if not identity.may_write:
            self.metrics.reject("read_only")
            return await self._reject(request, rec, 403, f"token {identity.name!r} is read-only: not stored",
                                      length, expect_continue)
        if rec.key is None:
            self.metrics.reject("bad_key")
            return rec.answer(_text(400, "bad cache hash: letters and digits only, at most 128", close=True))
        if length is None:
            self.metrics.reject("no_length")
            return rec.answer(_text(411, "Content-Length is required", close=True))
        try:
            upload = self.storage.begin_put(key, length)
        except StorageError as exc:
            reason = {409: "conflict", 413: "too_large"}.get(exc.status, "not_stored")
            if exc.status == 409:
                self.metrics.conflicts += 1
            else:
                self.metrics.reject(reason)
            if exc.status == 413:
                return rec.answer(_text(413, exc.message, close=True))
            return await self._reject(request, rec, exc.status, exc.message, length, expect_continue)
        try:
            if expect_continue:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._receive(request, upload.write)
            rec.bytes_in = upload.written
            if self.storage.fsync:
                # Shielded: if this handler is cancelled (drain timeout) the commit still finishes
                # whole, and the abort below is a no-op once a commit has started.
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, upload.commit))
            else:
                upload.commit()
        except StorageError as exc:
            upload.abort()
            if exc.status == 409:
                self.metrics.conflicts += 1
            else:
                self.metrics.reject("not_stored" if exc.status == 403 else "incomplete")
            rec.reason = exc.message
            if not request.content.is_eof():
                try:
                    await self._drain(request)  # a fault mid-body: still answer where Nx can read it
                except _BodyTimeout:
                    return rec.answer(_text(exc.status, exc.message, close=True))
            return rec.answer(_text(exc.status, exc.message))
        except _BodyTimeout:
            upload.abort()
            self.metrics.reject("body_timeout")
            return rec.answer(_text(408, f"no body bytes for {self.body_timeout:g}s: upload discarded", close=True))
        except BaseException:
            upload.abort()  # client disconnected or the handler was cancelled: nothing is published
            self.metrics.reject("interrupted")
            raise
        self.metrics.puts += 1
        self.metrics.bytes_in += upload.written
        return rec.answer(web.Response(status=200))

    async def _reject(
        self, request: BaseRequest, rec: _Record, status: int, message: str,
        length: int | None, expect_continue: bool, drain_cap: int | None = None,
    ) -> web.StreamResponse:
        rec.reason = message
        cap = self.storage.max_artifact_bytes if drain_cap is None else drain_cap
        if expect_continue or length is None or length > cap:
            return rec.answer(_text(status, message, close=True))
        try:
            await self._drain(request)
        except _BodyTimeout:
            return rec.answer(_text(status, message, close=True))
        return rec.answer(_text(status, message))

    async def _drain(self, request: BaseRequest) -> None:
        await self._receive(request, lambda chunk: None)

    async def _receive(self, request: BaseRequest, sink) -> None:  # type: ignore[no-untyped-def]
        """Feed the body to `sink` chunk by chunk; `_BodyTimeout` when it stalls."""
        content = request.content
        timeout = self.body_timeout
        while True:
            chunk = content.read_nowait()  # what is already buffered, without arming a timer
            if not chunk:
                if content.at_eof():
                    return
                try:
                    async with asyncio.timeout(timeout):
                        chunk = await content.readany()
                except TimeoutError:
                    raise _BodyTimeout() from None
                if not chunk:
                    return
            sink(chunk)

    # ----------------------------------------------------------------- health

    def _health(self) -> web.Response:
        stats = self.storage.stats()
        last = self.storage.counters.last_error
        problems = []
        if last is not None and time.time() - last.at < _ERROR_RECENT_S:
            problems.append(f"storage error {int(time.time() - last.at)}s ago")
        if 0 <= stats.free_disk_bytes < stats.min_free_disk_bytes:
            problems.append("free disk below --min-free-disk")
        body = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 1),
            "entries": stats.entries,
            "bytes": stats.bytes,
            "max_bytes": stats.max_bytes,
            "free_disk_bytes": stats.free_disk_bytes,
            "min_free_disk_bytes": stats.min_free_disk_bytes,
            "tokens": len(self.tokens),
            "last_storage_error": None if last is None else {"at": last.at, "op": last.op, "message": last.message},
        }
        return web.Response(body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
