"""Run the server: listen, reload tokens, scrub in the background, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import threading
from dataclasses import dataclass

from ..accesslog import AccessLog
from ..auth import TokenFileError, TokenStore
from ..config import Settings
from ..metrics import Metrics
from ..replication.peers import PeerLink
from ..replication.storage import SharedDiskStorage
from ..storage.s3 import S3Storage
from ..storage.disk import DiskStorage
from .handler import CacheHandler
from .connections import HttpServer

log = logging.getLogger("cache_server")

TOKEN_POLL_S = 2.0
LISTEN_BACKLOG = 1024
ACCESS_LOG_FLUSH_S = 1.0


class ListenError(Exception):
    """An address could not be bound (in use, not on this host)."""


@dataclass
class Worker:
    """What one of several server processes gets from the supervisor (see workers.py)."""

    index: int
    storage: DiskStorage | S3Storage  # its directory index (the S3 backend's: its tier's) a SharedDiskStorage
    sockets: list[socket.socket]
    peers: PeerLink
    stop_asked: threading.Event  # set by a stop that came before serve() listened for one


def listen_error(host: str, port: int, exc: OSError) -> ListenError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ListenError(f"cannot listen on {host}:{port}: {reason}")


def log_listening(sock: socket.socket, settings: Settings, tokens: int, workers: int = 1) -> None:
    address = sock.getsockname()
    shown = f"[{address[0]}]" if ":" in address[0] else address[0]
    processes = f", {workers} worker processes" if workers > 1 else ""
    log.info("listening on http://%s:%d (storage %s, %d token(s)%s)", shown, address[1], settings.storage, tokens, processes)


def open_storage(settings: Settings) -> DiskStorage | S3Storage:
    """The storage of a server process, or with several (--workers), the one they share."""
    if settings.on_s3:
        return open_s3_storage(settings)
    kind = SharedDiskStorage if settings.workers > 1 else DiskStorage
    return kind(
        settings.storage,
        max_bytes=settings.max_size,
        max_artifact_bytes=settings.max_artifact_size,
        min_free_bytes=settings.min_free_disk,
        fsync=settings.fsync,
        memory_cache_bytes=settings.memory_cache // settings.workers,
        max_entries=settings.max_entries,
    )


def open_s3_storage(settings: Settings) -> S3Storage:
    from ..storage.objectstore import ObjectStore, S3Location  # aiobotocore is imported only when used

    keep = settings.local_tier_size > 0
    # With nothing kept, the tier still carries the bodies in flight (the disk's free space is
    # the real limit then), and one token's uploads may use all of that room.
    in_flight = 16 * settings.max_artifact_size
    # With --workers, the workers share the tier as they share a disk backend's directory.
    kind = SharedDiskStorage if settings.workers > 1 else DiskStorage
    tier = kind(settings.local_tier, max_bytes=settings.local_tier_size if keep else in_flight,
                max_artifact_bytes=settings.max_artifact_size, min_free_bytes=settings.min_free_disk,
                fsync=False, memory_cache_bytes=settings.memory_cache // settings.workers,
                max_in_flight_per_owner=None if keep else in_flight)
    store = ObjectStore(S3Location.parse(settings.storage), settings.s3_endpoint, settings.s3_region,
                        settings.s3_timeout)
    storage = S3Storage(store, tier, keep_local=keep, max_bytes=settings.max_size, frontend_id=frontend_id(tier.root))
    storage.lru.interval = settings.bucket_check_interval
    return storage


def frontend_id(tier: str) -> str:
    """This frontend's name in the bucket's access views: made once, kept in its tier directory."""
    path = os.path.join(tier, "frontend-id")
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        name = f"{socket.gethostname()}-{secrets.token_hex(4)}"
        with open(path, "w") as fh:
            fh.write(name + "\n")
        return name


def shared_index(storage: DiskStorage | S3Storage) -> SharedDiskStorage:
    """The directory index the workers keep in step: the disk backend's, or the S3 backend's tier."""
    index = storage.tier if isinstance(storage, S3Storage) else storage
    assert isinstance(index, SharedDiskStorage)
    return index


async def serve(settings: Settings, tokens: TokenStore, *, worker: Worker | None = None) -> None:
    """One server process: the whole server, or one of `--workers` (then `worker` brings the
    storage opened before the fork, its listening sockets and its link to the other workers)."""
    storage = open_storage(settings) if worker is None else worker.storage
    metrics = Metrics(storage)
    access_log = AccessLog(settings.access_log)
    loop = asyncio.get_running_loop()
    storage.sync_in_batches(loop)
    if isinstance(storage, S3Storage):  # its client's set-up blocks: not mid-request
        await storage.connect()
    peers = None if worker is None else worker.peers
    if worker is not None:
        worker.peers.start(shared_index(worker.storage), metrics.snapshot)
        if isinstance(storage, S3Storage):
            storage.serve_as_worker(worker.index)
    handler = CacheHandler(
        storage=storage,
        tokens=tokens,
        metrics=metrics,
        access_log=access_log,
        url_prefix=settings.url_prefix,
        body_timeout=settings.body_timeout,
        peers=peers,
    )
    http = HttpServer(handler, idle_timeout=settings.idle_timeout, body_timeout=settings.body_timeout,
                      first_byte_timeout=settings.first_byte_timeout, max_connections=settings.max_connections,
                      max_per_address=settings.max_connections_per_address)
    stop = asyncio.Event()
    scrub_stop = threading.Event()
    background: list[asyncio.Task[None]] = []
    listeners: list[asyncio.Server] = []
    try:
        if worker is not None:
            for sock in worker.sockets:
                listeners.append(await loop.create_server(http, sock=sock, backlog=LISTEN_BACKLOG))
        else:
            for host, port in settings.binds:
                try:
                    listener = await loop.create_server(http, host, port, backlog=LISTEN_BACKLOG, reuse_address=True)
                except OSError as exc:
                    raise listen_error(host, port, exc) from None
                listeners.append(listener)
                for sock in listener.sockets:
                    log_listening(sock, settings, len(tokens))

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: reload_tokens(tokens, "SIGHUP"))
        if worker is not None and worker.stop_asked.is_set():
            stop.set()
        background.append(asyncio.create_task(_watch_tokens(tokens)))
        background.append(asyncio.create_task(_flush_periodically(access_log)))
        if isinstance(storage, S3Storage):  # the bucket's size cap
            background.append(asyncio.create_task(storage.maintain()))
        if settings.scrub_interval > 0 and (worker is None or worker.index == 0):
            background.append(asyncio.create_task(_scrub_periodically(storage, settings, scrub_stop)))
        await stop.wait()
        log.info("%sstopping: no new connections, draining %d request(s) in flight (up to %gs)",
                 "" if worker is None else f"worker {worker.index}: ", http.busy_connections(), settings.drain_timeout)
        for listener in listeners:
            listener.close()
        http.start_draining()
        try:
            await asyncio.wait_for(http.wait_idle(), settings.drain_timeout)
        except asyncio.TimeoutError:
            log.warning("drain timeout: %d request(s) still in flight are cut off", http.busy_connections())
    finally:
        scrub_stop.set()
        for listener in listeners:
            listener.close()
        http.abort_all()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
            if worker is not None:
                # A worker hears a stop more than once (systemd signals every process of the unit,
                # and the supervisor passes its own on): a late one must not kill it mid-teardown.
                signal.signal(sig, signal.SIG_IGN)
        if peers is not None:
            peers.close()
        await loop.run_in_executor(None, storage.stop_syncing)
        await loop.run_in_executor(None, storage.close)
        if isinstance(storage, S3Storage):  # the store's client, on this loop
            await storage.aclose()
        access_log.close()
        if worker is None:
            log.info("stopped")


def reload_tokens(tokens: TokenStore, why: str) -> None:
    try:
        tokens.reload()
    except TokenFileError as exc:
        log.error("tokens not reloaded (%s), keeping the previous %d: %s", why, len(tokens), exc)
        return
    log.info("tokens reloaded (%s): %d token(s)", why, len(tokens))


async def _watch_tokens(tokens: TokenStore) -> None:
    while True:
        await asyncio.sleep(TOKEN_POLL_S)
        if tokens.changed_on_disk():
            reload_tokens(tokens, "file changed")


async def _flush_periodically(access_log: AccessLog) -> None:
    while True:
        await asyncio.sleep(ACCESS_LOG_FLUSH_S)
        access_log.flush()


async def _scrub_periodically(storage: DiskStorage | S3Storage, settings: Settings, stop: threading.Event) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(settings.scrub_interval)
        report = await loop.run_in_executor(
            None, lambda: storage.scrub(max_bytes_per_s=settings.scrub_rate, stop=stop)
        )
        log.info("scrub: %d entries checked, %d damaged (quarantined), %d bytes read",
                 report.checked, report.damaged, report.bytes_read)
