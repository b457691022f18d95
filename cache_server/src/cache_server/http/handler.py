"""Cache semantics over HTTP: route, authenticate, call storage, map errors once.

Every answer is chosen for what the Nx 24 client tolerates (research/nx-cache.md):
GET answers only 200 or 404 once authenticated (a damaged entry or a read error
is a miss); PUT answers 200, 409 or 403 whenever the request itself was valid,
so a sick disk never fails a build; 401 carries `Content-Type: text/plain`
exactly. A rejected PUT body is drained before answering (Nx does not read an
early answer), and every body read has an idle timeout so nothing hangs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import __version__
from ..auth import Identity, TokenStore
from ..metrics import merge_snapshots
from ..storage.base import Blob, Storage, StorageFault
from ..namespaces import NAME as _NAMESPACE, TRUSTED, is_valid_hash, storage_key
from ..storage.errors import StorageError
from ..storage.syncer import BatchSyncer
from .protocol import Connection, Exchange, status_head

if TYPE_CHECKING:
    from ..accesslog import AccessLog
    from ..metrics import Metrics
    from ..replication.peers import PeerLink, Snapshot

log = logging.getLogger("cache_server.http")

_OCTET_HEAD = b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
_EMPTY = b"Content-Length: 0\r\n"
_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
_CACHE_PREFIX = "v1/cache/"
_NAMESPACE_PREFIX = "ns/"
# A rejected PUT is read to the end so the client sees our answer, unless that is unreasonable.
_DRAIN_CAP_UNAUTHENTICATED = 64 << 20
_ERROR_RECENT_S = 600.0
_BAD_KEY = "bad cache hash: letters and digits only, at most 128"
_BAD_NAMESPACE = "bad namespace in /ns/<namespace>/v1/cache/: lowercase letters, digits and '-', at most 32"


def _text(conn: Connection, ex: Exchange, status: int, message: str, *, close: bool = False) -> None:
    body = message.encode()
    ex.status = status
    # Exactly "text/plain": Nx rejects a 401 whose type carries a charset.
    head = status_head(status) + b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
    # A HEAD answer has no body: the client reads the next answer where this one's would start.
    conn.respond(ex, head, b"" if ex.method == "HEAD" else body, close=close)


def _empty(conn: Connection, ex: Exchange, status: int) -> None:
    ex.status = status
    conn.respond(ex, status_head(status) + _EMPTY)


class CacheHandler:
    """What to answer, given a parsed request; `Connection` (protocol.py) owns the wire.

    `begin` runs once the head is read (a PUT is accepted or refused before its body),
    `body` per body chunk, `complete` once the request is whole.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        tokens: TokenStore,
        metrics: Metrics,
        access_log: AccessLog,
        url_prefix: str = "",
        body_timeout: float = 30.0,
        syncer: BatchSyncer | None = None,
        peers: PeerLink | None = None,
    ) -> None:
        self.storage = storage
        self.peers = peers  # --workers: the other processes, for totals in /health and /metrics
        self.syncer = syncer  # fsync mode: uploads are synced in batches off the loop
        self.tokens = tokens
        self.metrics = metrics
        self.access_log = access_log
        self.body_timeout = body_timeout
        self.started = time.time()
        self._prefix = url_prefix.strip("/") + "/" if url_prefix.strip("/") else ""

    # ---------------------------------------------------------------- routing

    def _route(self, ex: Exchange) -> None:
        """Any URL but the plain `/v1/cache/{hash}` that `begin` takes itself."""
        path = ex.url.decode("latin-1").split("?", 1)[0].lstrip("/")  # Nx turns a trailing slash in the URL into '//v1/...'
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :].lstrip("/")
        if path.startswith(_NAMESPACE_PREFIX):
            namespace, _, path = path[len(_NAMESPACE_PREFIX) :].partition("/")
            if not path.lstrip("/").startswith(_CACHE_PREFIX):
                return
            path = path.lstrip("/")
            ex.namespace = namespace if _NAMESPACE.fullmatch(namespace) and namespace != TRUSTED else None
        if path.startswith(_CACHE_PREFIX):
            ex.kind = "cache"
            key = path[len(_CACHE_PREFIX) :]
            ex.key = key if is_valid_hash(key) else None
        elif path in ("health", "metrics"):
            ex.kind = path

    def begin(self, conn: Connection, ex: Exchange) -> None:
        url = ex.url
        if url.startswith(b"/v1/cache/") and not self._prefix and b"?" not in url:  # what Nx sends
            ex.kind = "cache"
            key = url[10:]
            # is_valid_key's rule, on the bytes: bytes.isalnum() accepts ASCII letters and digits only
            if len(key) <= 128 and key.isalnum():
                ex.key = key.decode("ascii")
        else:
            self._route(ex)
        if ex.method == "PUT" and ex.kind == "cache":
            self._begin_put(conn, ex)

    def body(self, conn: Connection, ex: Exchange, chunk: bytes) -> None:
        upload = ex.upload
        if upload is None:
            return  # a refused PUT being drained, or a body nobody asked for
        try:
            upload.write(chunk)
        except StorageError as exc:
            # A fault mid-body (disk full, EIO): the upload is gone; drain the rest and
            # answer where Nx can read it.
            ex.upload = None
            self.metrics.reject("not_stored" if exc.status == 403 else "incomplete")
            ex.reason = exc.message
            ex.reply = (exc.status, exc.message)

    def complete(self, conn: Connection, ex: Exchange) -> None:
        method = ex.method
        kind = ex.kind
        if kind == "cache":
            if method == "GET" or method == "HEAD":
                self._get(conn, ex)
            elif method == "PUT":
                self._complete_put(conn, ex)
            else:
                ex.status = 405
                body = b"method not allowed: use GET or PUT"
                conn.respond(ex, status_head(405) + b"Allow: GET, HEAD, PUT\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n" % len(body), body)
        elif kind in ("health", "metrics") and method in ("GET", "HEAD"):
            if self.peers is None:
                self._report(conn, ex, [])
            else:
                answers: list[Snapshot] = []

                def ask(done: Callable[[BaseException | None], None]) -> None:
                    def answered(snapshots: list[Snapshot]) -> None:
                        answers.extend(snapshots)
                        done(None)

                    assert self.peers is not None
                    self.peers.gather(answered)

                conn.wait_for(ex, ask, lambda conn, ex, error: self._report(conn, ex, answers))
        else:
            _text(conn, ex, 404, "not found: the cache API is PUT/GET /v1/cache/{hash}")

    def _report(self, conn: Connection, ex: Exchange, peers: list[Snapshot]) -> None:
        """/health or /metrics, with the other workers' counters (`peers`) added in."""
        if ex.kind == "health":
            self._send(conn, ex, b"application/json", self._health(peers))
        else:
            self._send(conn, ex, _PROMETHEUS, self.metrics.render(peers))

    def _send(self, conn: Connection, ex: Exchange, content_type: bytes, body: bytes) -> None:
        ex.status = 200
        head = status_head(200) + b"Content-Type: " + content_type + b"\r\nContent-Length: %d\r\n" % len(body)
        conn.respond(ex, head, b"" if ex.method == "HEAD" else body)

    # ------------------------------------------------------- ends of requests

    def finished(self, ex: Exchange) -> None:
        """Every answered request passes here once: latency and the access log."""
        elapsed = time.perf_counter() - ex.started
        if ex.kind == "cache":
            self.metrics.latency["PUT" if ex.method == "PUT" else "GET"].observe(elapsed)
        self.access_log.write(ex.remote, ex.method, ex.kind, ex.key, ex.status, elapsed * 1000, ex.token,
                              ex.bytes_in, ex.bytes_out, ex.reason)

    def sent(self, ex: Exchange, ok: bool) -> None:
        if ok:
            self.metrics.bytes_out += ex.bytes_out

    def lost(self, ex: Exchange) -> None:
        """The client hung up before its answer."""
        if ex.upload is not None:
            ex.upload.abort()  # nothing is published
            ex.upload = None
            self.metrics.reject("interrupted")
        ex.reason = ex.reason or "client went away"
        ex.answered = True
        self.finished(ex)

    def timed_out(self, conn: Connection, ex: Exchange) -> None:
        if ex.reply is not None:  # a refused body that stopped coming: still say why
            _text(conn, ex, ex.reply[0], ex.reply[1], close=True)
            return
        if ex.upload is not None:
            ex.upload.abort()
            ex.upload = None
        self.metrics.reject("body_timeout")
        _text(conn, ex, 408, f"no body bytes for {self.body_timeout:g}s: upload discarded", close=True)

    def refuse(self, conn: Connection, ex: Exchange, status: int, message: str) -> None:
        self.metrics.reject("bad_request")
        ex.reason = message
        _text(conn, ex, status, message, close=True)

    def internal_error(self, conn: Connection, ex: Exchange) -> None:
        # A bug must not fail the user's build: Nx treats any GET answer but 200/404, and any
        # PUT answer but 200/403/409, as fatal. Log it loudly and answer a miss / "not stored".
        log.exception("internal error on %s %s", ex.method, ex.kind)
        self.metrics.reject("internal_error")
        if ex.upload is not None:
            ex.upload.abort()
            ex.upload = None
        if ex.answered:
            return
        if ex.kind == "cache" and ex.method == "PUT":
            _text(conn, ex, 403, "not stored: internal error", close=True)
        elif ex.kind == "cache":
            _empty(conn, ex, 404)
        else:
            _text(conn, ex, 500, "internal error")

    # -------------------------------------------------------------------- GET

    def _authenticate(self, conn: Connection, ex: Exchange) -> Identity | None:
        identity = self.tokens.authenticate(ex.authorization, conn.proven)
        if identity is None:
            self.metrics.reject("unauthorized")
        else:
            ex.token = identity.name
        return identity

    def _get(self, conn: Connection, ex: Exchange) -> None:
        identity = self._authenticate(conn, ex)
        if identity is None:
            _text(conn, ex, 401, "missing or unknown cache token (NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN)")
            return
        if ex.key is None or ex.namespace is None:
            self.metrics.reject("bad_key")
            _text(conn, ex, 400, _BAD_KEY if ex.key is None else _BAD_NAMESPACE)
            return
        namespace = ex.namespace
        if namespace == TRUSTED:
            blob: Blob | None = self.storage.get(ex.key)
        else:
            if not identity.may_read(namespace):
                self.metrics.reject("namespace")
                _text(conn, ex, 403, f"token {identity.name!r} may not use namespace {namespace!r}")
                return
            # A namespace reads through to the trusted entries it does not have itself.
            blob = self.storage.get(storage_key(namespace, ex.key)) or self.storage.get(ex.key)
        if blob is None:
            self.metrics.misses += 1
            _empty(conn, ex, 404)
            return
        self.metrics.hits += 1
        ex.status = 200
        head = status_head(200) + _OCTET_HEAD % blob.size
        if ex.method == "HEAD":
            blob.close()
            conn.respond(ex, head)
        elif blob.inline is not None:
            ex.bytes_out = blob.size
            self.metrics.bytes_out += blob.size
            conn.respond(ex, head, blob.inline)
        else:
            conn.send_file(ex, head, blob)

    # -------------------------------------------------------------------- PUT

    def _begin_put(self, conn: Connection, ex: Exchange) -> None:
        length = ex.content_length
        identity = self._authenticate(conn, ex)
        if identity is None:
            self._reject(conn, ex, 401, "missing or unknown cache token", drain_cap=_DRAIN_CAP_UNAUTHENTICATED)
            return
        if not identity.may_write:
            self.metrics.reject("read_only")
            self._reject(conn, ex, 403, f"token {identity.name!r} is read-only: not stored")
            return
        if ex.key is None or ex.namespace is None:
            self.metrics.reject("bad_key")
            _text(conn, ex, 400, _BAD_KEY if ex.key is None else _BAD_NAMESPACE, close=True)
            return
        if not identity.may_use(ex.namespace):
            self.metrics.reject("namespace")
            self._reject(conn, ex, 403, f"token {identity.name!r} may not write namespace {ex.namespace!r}: not stored")
            return
        if length is None or ex.chunked:
            self.metrics.reject("no_length")
            _text(conn, ex, 411, "Content-Length is required", close=True)
            return
        try:
            # A client that waits for 100 Continue before the body is told of a conflict first.
            ex.upload = self.storage.begin_put(storage_key(ex.namespace, ex.key), length, exact=ex.expect_continue,
                                               owner=identity.name)
        except StorageError as exc:
            if exc.status == 409:
                self.metrics.conflicts += 1
            else:
                self.metrics.reject({413: "too_large"}.get(exc.status, "not_stored"))
            if exc.status == 413:
                ex.reason = exc.message
                _text(conn, ex, 413, exc.message, close=True)
            else:
                self._reject(conn, ex, exc.status, exc.message)
            return
        if ex.expect_continue:
            conn.send_continue()

    def _reject(self, conn: Connection, ex: Exchange, status: int, message: str, drain_cap: int | None = None) -> None:
        """Refuse a PUT: after draining its body when that is reasonable, else at once and hang up."""
        ex.reason = message
        length = ex.content_length
        cap = self.storage.max_artifact_bytes if drain_cap is None else drain_cap
        if ex.expect_continue or length is None or ex.chunked or length > cap:
            _text(conn, ex, status, message, close=True)
        else:
            ex.reply = (status, message)  # Nx sends the whole body before it reads an answer

    def _complete_put(self, conn: Connection, ex: Exchange) -> None:
        upload = ex.upload
        if upload is None:
            status, message = ex.reply or (403, "not stored")
            _text(conn, ex, status, message)
            return
        ex.bytes_in = upload.written
        syncer = self.syncer
        if syncer is None:
            self._finish_put(conn, ex, upload.commit)
            return
        try:
            staged = upload.stage()
        except StorageError as exc:
            self._answer_put(conn, ex, exc)
            return

        def synced(conn: Connection, ex: Exchange, error: BaseException | None) -> None:
            if error is not None and not isinstance(error, OSError):
                raise error  # not from fsync: a bug, answered by internal_error
            self._finish_put(conn, ex, lambda: upload.publish(staged, error))

        conn.wait_for(ex, lambda done: syncer.submit(staged, done), synced)

    def _finish_put(self, conn: Connection, ex: Exchange, step: Callable[[], None]) -> None:
        """Run the last storage step of a PUT and answer with its outcome."""
        try:
            step()
        except StorageError as exc:
            self._answer_put(conn, ex, exc)
        else:
            self._answer_put(conn, ex, None)

    def _answer_put(self, conn: Connection, ex: Exchange, error: StorageError | None) -> None:
        ex.upload = None
        if error is None:
            self.metrics.puts += 1
            self.metrics.bytes_in += ex.bytes_in
            _empty(conn, ex, 200)
            return
        if error.status == 409:
            self.metrics.conflicts += 1
        else:
            self.metrics.reject("not_stored" if error.status == 403 else "incomplete")
        ex.reason = error.message
        _text(conn, ex, error.status, error.message)

    # ----------------------------------------------------------------- health

    def _health(self, peers: list[Snapshot]) -> bytes:
        stats = self.storage.stats()
        last = self.storage.counters.last_error
        if peers:
            newest = merge_snapshots([self.metrics.snapshot(stats), *peers])["last_error"]
            last = None if newest is None else StorageFault(*newest)
        problems = []
        if last is not None and time.time() - last.at < _ERROR_RECENT_S:
            problems.append(f"storage error {int(time.time() - last.at)}s ago")
        if 0 <= stats.free_disk_bytes < stats.min_free_disk_bytes:
            problems.append("free disk below --min-free-disk")
        if 0 <= stats.free_disk_files < stats.min_free_disk_files:
            problems.append("free inodes below the 1% the cache keeps")
        if not len(self.tokens):
            problems.append("no tokens: every request is refused")
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
            "free_disk_files": stats.free_disk_files,
            "max_entries": stats.max_entries,
            "tokens": len(self.tokens),
            "last_storage_error": None if last is None else {"at": last.at, "op": last.op, "message": last.message},
        }
        return json.dumps(body).encode()
