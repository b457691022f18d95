"""Cache semantics over HTTP: route, authenticate, call storage, map errors once.

Every answer is chosen for what the Nx 24 client tolerates (research/nx-cache.md):
GET answers only 200 or 404 once authenticated (a damaged entry or a read error
is a miss); PUT answers 200, 409 or 403 whenever the request itself was valid,
so a sick disk never fails a build; 401 carries `Content-Type: text/plain`
exactly. A rejected PUT body is drained before answering (Nx does not read an
early answer), and every body read has an idle timeout so nothing hangs.

`CacheHandler` is the application the protocol starts (exchange.py); `CacheCycle` answers
one request and holds what the cache knows of it (route, token, upload, outcome).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..auth import Identity, TokenStore
from ..namespaces import NAME as _NAMESPACE, TRUSTED, is_valid_hash, storage_key
from ..storage.base import Blob, RemoteStorage, Storage, Upload
from ..storage.errors import StorageError
from .exchange import Request
from .heads import status_head
from .report import Reports

if TYPE_CHECKING:
    from ..accesslog import AccessLog
    from ..metrics import Metrics
    from ..replication.peers import PeerLink
    from .protocol import Connection

log = logging.getLogger("cache_server.http")

_OCTET_HEAD = b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
_EMPTY = b"Content-Length: 0\r\n"
_CACHE_PREFIX = "v1/cache/"
_NAMESPACE_PREFIX = "ns/"
# A rejected PUT is read to the end so the client sees our answer, unless that is unreasonable.
_DRAIN_CAP_UNAUTHENTICATED = 64 << 20
_BAD_KEY = "bad cache hash: letters and digits only, at most 128"
_BAD_NAMESPACE = "bad namespace in /ns/<namespace>/v1/cache/: lowercase letters, digits and '-', at most 32"


class CacheHandler:
    """What every request shares: storage, tokens, metrics, the access log, the URL prefix."""

    def __init__(
        self,
        *,
        storage: Storage,
        tokens: TokenStore,
        metrics: Metrics,
        access_log: AccessLog,
        url_prefix: str = "",
        body_timeout: float = 30.0,
        peers: PeerLink | None = None,
    ) -> None:
        self.storage = storage
        self.tokens = tokens
        self.metrics = metrics
        self.access_log = access_log
        self.body_timeout = body_timeout
        self.reports = Reports(storage, tokens, metrics, peers)
        self._prefix = url_prefix.strip("/") + "/" if url_prefix.strip("/") else ""

    def start(self, conn: Connection, request: Request) -> CacheCycle:
        request.cycle = cycle = CacheCycle(self, conn, request)
        try:
            self._route(cycle, request.url)
            if request.method == "PUT" and cycle.kind == "cache":
                cycle.begin_put()
        except Exception:
            cycle.failed()
        return cycle

    def refuse(self, conn: Connection, request: Request, status: int, message: str) -> None:
        cycle = request.cycle
        if not isinstance(cycle, CacheCycle):
            cycle = CacheCycle(self, conn, request)
            request.cycle = cycle
        cycle.refuse(status, message)

    def _route(self, cycle: CacheCycle, url: bytes) -> None:
        """Which resource: `kind` (cache, health, metrics or other), and for the cache its key
        and namespace, each None when not valid."""
        if url.startswith(b"/v1/cache/") and not self._prefix and b"?" not in url:  # what Nx sends
            cycle.kind = "cache"
            raw = url[10:]
            # is_valid_hash's rule, on the bytes: bytes.isalnum() accepts ASCII letters and digits only
            if len(raw) <= 128 and raw.isalnum():
                cycle.key = raw.decode("ascii")
            return
        path = url.decode("latin-1").split("?", 1)[0].lstrip("/")  # Nx turns a trailing slash in the URL into '//v1/...'
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :].lstrip("/")
        if path.startswith(_NAMESPACE_PREFIX):
            namespace, _, path = path[len(_NAMESPACE_PREFIX) :].partition("/")
            if not path.lstrip("/").startswith(_CACHE_PREFIX):
                return
            path = path.lstrip("/")
            cycle.namespace = namespace if _NAMESPACE.fullmatch(namespace) and namespace != TRUSTED else None
        if path.startswith(_CACHE_PREFIX):
            cycle.kind = "cache"
            key = path[len(_CACHE_PREFIX) :]
            cycle.key = key if is_valid_hash(key) else None
        elif path in ("health", "metrics"):
            cycle.kind = path


class CacheCycle:
    """One request's answer, and the record the access log writes of it."""

    __slots__ = ("handler", "conn", "request", "kind", "key", "namespace", "token", "status", "bytes_in",
                 "bytes_out", "reason", "upload", "reply", "file_size", "found")

    def __init__(self, handler: CacheHandler, conn: Connection, request: Request) -> None:
        self.handler = handler
        self.conn = conn
        self.request = request
        self.kind = "other"  # route: cache | health | metrics | other
        self.key: str | None = None  # the cache key, only when it is valid
        self.namespace: str | None = TRUSTED  # the cache namespace (namespaces.py); None when not a valid name
        self.token: str | None = None
        self.status: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: str | None = None
        self.upload: Upload | None = None  # a PUT body being stored
        self.reply: tuple[int, str] | None = None  # a refused PUT: answered once its body is drained
        self.file_size = -1  # an answer sent from a file (sendfile): its size

    # ------------------------------------------------------------- answers

    def _text(self, status: int, message: str, *, close: bool = False) -> None:
        body = message.encode()
        self.status = status
        # Exactly "text/plain": Nx rejects a 401 whose type carries a charset.
        head = status_head(status) + b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
        # A HEAD answer has no body: the client reads the next answer where this one's would start.
        self.conn.respond(self.request, head, b"" if self.request.method == "HEAD" else body, close=close)

    def _empty(self, status: int) -> None:
        self.status = status
        self.conn.respond(self.request, status_head(status) + _EMPTY)

    def send(self, content_type: bytes, body: bytes) -> None:
        self.status = 200
        head = status_head(200) + b"Content-Type: " + content_type + b"\r\nContent-Length: %d\r\n" % len(body)
        self.conn.respond(self.request, head, b"" if self.request.method == "HEAD" else body)

    # ------------------------------------------------- what the protocol says

    def body(self, chunk: bytes) -> None:
        upload = self.upload
        if upload is None:
            return  # a refused PUT being drained, or a body nobody asked for
        try:
            upload.write(chunk)
        except StorageError as exc:
            # A fault mid-body (disk full, EIO): the upload is gone; drain the rest and
            # answer where Nx can read it.
            self.upload = None
            self.handler.metrics.reject("not_stored" if exc.status == 403 else "incomplete")
            self.reason = exc.message
            self.reply = (exc.status, exc.message)

    def complete(self) -> None:
        method = self.request.method
        kind = self.kind
        if kind == "cache":
            if method == "GET" or method == "HEAD":
                self._get()
            elif method == "PUT":
                self._complete_put()
            else:
                self.status = 405
                body = b"method not allowed: use GET or PUT"
                self.conn.respond(self.request, status_head(405) + b"Allow: GET, HEAD, PUT\r\nContent-Type: text/plain\r\n"
                                  b"Content-Length: %d\r\n" % len(body), body)
        elif kind in ("health", "metrics") and method in ("GET", "HEAD"):
            self.handler.reports.answer(self, kind)
        else:
            self._text(404, "not found: the cache API is PUT/GET /v1/cache/{hash}")

    def done(self, aborted: str | None) -> None:
        """Every answered request passes here once: latency and the access log."""
        metrics = self.handler.metrics
        if aborted is not None:
            self.reason = aborted
        elif self.file_size >= 0:
            self.bytes_out = self.file_size
            metrics.bytes_out += self.file_size
        request = self.request
        elapsed = time.perf_counter() - request.started
        if self.kind == "cache":
            metrics.latency["PUT" if request.method == "PUT" else "GET"].observe(elapsed)
        self.handler.access_log.write(request.remote, request.method, self.kind, self.key, self.status,
                                      elapsed * 1000, self.token, self.bytes_in, self.bytes_out, self.reason)

    def lost(self) -> None:
        """The client hung up before its answer (or after an early one)."""
        if self.upload is not None:
            self.upload.abort()  # nothing is published
            self.upload = None
            self.handler.metrics.reject("interrupted")
        if not self.request.answered:
            self.reason = self.reason or "client went away"
            self.request.answered = True
            self.done(None)

    def timed_out(self) -> None:
        if self.reply is not None:  # a refused body that stopped coming: still say why
            self._text(self.reply[0], self.reply[1], close=True)
            return
        if self.upload is not None:
            self.upload.abort()
            self.upload = None
        self.handler.metrics.reject("body_timeout")
        self._text(408, f"no body bytes for {self.handler.body_timeout:g}s: upload discarded", close=True)

    def refuse(self, status: int, message: str) -> None:
        if self.upload is not None:
            self.upload.abort()
            self.upload = None
        self.handler.metrics.reject("bad_request")
        self.reason = message
        if not self.request.answered:
            self._text(status, message, close=True)

    def failed(self) -> None:
        # A bug must not fail the user's build: Nx treats any GET answer but 200/404, and any
        # PUT answer but 200/403/409, as fatal. Log it loudly and answer a miss / "not stored".
        log.exception("internal error on %s %s", self.request.method, self.kind)
        self.handler.metrics.reject("internal_error")
        if self.upload is not None:
            self.upload.abort()
            self.upload = None
        if self.request.answered:
            return
        if self.kind == "cache" and self.request.method == "PUT":
            self._text(403, "not stored: internal error", close=True)
        elif self.kind == "cache":
            self._empty(404)
        else:
            self._text(500, "internal error")

    # -------------------------------------------------------------------- GET

    def _authenticate(self) -> Identity | None:
        identity = self.handler.tokens.authenticate(self.request.authorization, self.conn.proven)
        if identity is None:
            self.handler.metrics.reject("unauthorized")
        else:
            self.token = identity.name
        return identity

    def _get(self) -> None:
        handler = self.handler
        identity = self._authenticate()
        if identity is None:
            self._text(401, "missing or unknown cache token (NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN)")
            return
        key, namespace = self.key, self.namespace
        if key is None or namespace is None:
            handler.metrics.reject("bad_key")
            self._text(400, _BAD_KEY if key is None else _BAD_NAMESPACE)
            return
        storage = handler.storage
        if namespace != TRUSTED and not identity.may_read(namespace):
            handler.metrics.reject("namespace")
            self._text(403, f"token {identity.name!r} may not use namespace {namespace!r}")
            return
        if storage.remote:
            # A namespace reads through to the trusted entries it does not have itself.
            keys = [key] if namespace == TRUSTED else [storage_key(namespace, key), key]
            remote = cast(RemoteStorage, storage)
            self.conn.wait_for(self.request, lambda done: remote.fetch(keys, lambda blob: self._fetched(blob, done)),
                               lambda _: self._send_blob(self.found))
            return
        if namespace == TRUSTED:
            blob: Blob | None = storage.get(key)
        else:
            blob = storage.get(storage_key(namespace, key)) or storage.get(key)
        self._send_blob(blob)

    def _fetched(self, blob: Blob | None, done: Callable[[BaseException | None], None]) -> None:
        self.found = blob
        done(None)

    def _send_blob(self, blob: Blob | None) -> None:
        handler = self.handler
        if blob is None:
            handler.metrics.misses += 1
            self._empty(404)
            return
        handler.metrics.hits += 1
        self.status = 200
        head = status_head(200) + _OCTET_HEAD % blob.size
        if self.request.method == "HEAD":
            blob.close()
            self.conn.respond(self.request, head)
        elif blob.inline is not None:
            self.bytes_out = blob.size
            handler.metrics.bytes_out += blob.size
            self.conn.respond(self.request, head, blob.inline)
        else:
            self.file_size = blob.size
            self.conn.send_file(self.request, head, blob)

    # -------------------------------------------------------------------- PUT

    def begin_put(self) -> None:
        """The head of a PUT is read: accept its body into an upload, or refuse it."""
        handler = self.handler
        request = self.request
        length = request.content_length
        identity = self._authenticate()
        if identity is None:
            self._reject(401, "missing or unknown cache token", drain_cap=_DRAIN_CAP_UNAUTHENTICATED)
            return
        if not identity.may_write:
            handler.metrics.reject("read_only")
            self._reject(403, f"token {identity.name!r} is read-only: not stored")
            return
        if self.key is None or self.namespace is None:
            handler.metrics.reject("bad_key")
            self._text(400, _BAD_KEY if self.key is None else _BAD_NAMESPACE, close=True)
            return
        if not identity.may_use(self.namespace):
            handler.metrics.reject("namespace")
            self._reject(403, f"token {identity.name!r} may not write namespace {self.namespace!r}: not stored")
            return
        if length is None or request.chunked:
            handler.metrics.reject("no_length")
            self._text(411, "Content-Length is required", close=True)
            return
        try:
            # A client that waits for 100 Continue before the body is told of a conflict first.
            self.upload = handler.storage.begin_put(storage_key(self.namespace, self.key), length,
                                                    exact=request.expect_continue, owner=identity.name)
        except StorageError as exc:
            if exc.status == 409:
                handler.metrics.conflicts += 1
            else:
                handler.metrics.reject({413: "too_large"}.get(exc.status, "not_stored"))
            if exc.status == 413:
                self.reason = exc.message
                self._text(413, exc.message, close=True)
            else:
                self._reject(exc.status, exc.message)
            return
        if request.expect_continue:
            self.conn.send_continue()

    def _reject(self, status: int, message: str, drain_cap: int | None = None) -> None:
        """Refuse a PUT: after draining its body when that is reasonable, else at once and hang up."""
        self.reason = message
        request = self.request
        length = request.content_length
        cap = self.handler.storage.max_artifact_bytes if drain_cap is None else drain_cap
        if request.expect_continue or length is None or request.chunked or length > cap:
            self._text(status, message, close=True)
        else:
            self.reply = (status, message)  # Nx sends the whole body before it reads an answer

    def _complete_put(self) -> None:
        upload = self.upload
        if upload is None:
            status, message = self.reply or (403, "not stored")
            self._text(status, message)
            return
        self.bytes_in = upload.written
        self.conn.wait_for(self.request, upload.finish, self._answer_put)

    def _answer_put(self, error: BaseException | None) -> None:
        self.upload = None
        metrics = self.handler.metrics
        if error is None:
            metrics.puts += 1
            metrics.bytes_in += self.bytes_in
            self._empty(200)
            return
        if not isinstance(error, StorageError):
            raise error  # a bug, answered by `failed`
        if error.status == 409:
            metrics.conflicts += 1
        else:
            metrics.reject("not_stored" if error.status == 403 else "incomplete")
        self.reason = error.message
        self._text(error.status, error.message)
