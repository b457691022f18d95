"""Run the server: listen, reload tokens, scrub in the background, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

from ..accesslog import AccessLog
from ..auth import TokenFileError, TokenStore
from ..config import Settings
from ..metrics import Metrics
from ..storage.disk import DiskStorage
from ..storage.syncer import BatchSyncer
from .handler import CacheHandler
from .protocol import HttpServer

log = logging.getLogger("cache_server")

TOKEN_POLL_S = 2.0
ACCESS_LOG_FLUSH_S = 1.0


class ListenError(Exception):
    """An address could not be bound (in use, not on this host)."""


def open_storage(settings: Settings) -> DiskStorage:
    return DiskStorage(
        settings.storage,
        max_bytes=settings.max_size,
        max_artifact_bytes=settings.max_artifact_size,
        min_free_bytes=settings.min_free_disk,
        fsync=settings.fsync,
        memory_cache_bytes=settings.memory_cache,
    )


async def serve(settings: Settings, tokens: TokenStore) -> None:
    storage = open_storage(settings)
    metrics = Metrics(storage)
    access_log = AccessLog(settings.access_log)
    loop = asyncio.get_running_loop()
    syncer = BatchSyncer(loop) if settings.fsync else None
    handler = CacheHandler(
        storage=storage,
        tokens=tokens,
        metrics=metrics,
        access_log=access_log,
        url_prefix=settings.url_prefix,
        body_timeout=settings.body_timeout,
        syncer=syncer,
    )
    http = HttpServer(handler, idle_timeout=settings.idle_timeout, body_timeout=settings.body_timeout)
    stop = asyncio.Event()
    scrub_stop = threading.Event()
    background: list[asyncio.Task[None]] = []
    listeners: list[asyncio.Server] = []
    try:
        for host, port in settings.binds:
            try:
                listener = await loop.create_server(http, host, port, backlog=1024, reuse_address=True)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
            listeners.append(listener)
            for sock in listener.sockets:
                address = sock.getsockname()
                shown = f"[{address[0]}]" if ":" in address[0] else address[0]
                log.info("listening on http://%s:%d (storage %s, %d token(s))", shown, address[1], settings.storage, len(tokens))

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload_tokens(tokens, "SIGHUP"))
        background.append(asyncio.create_task(_watch_tokens(tokens)))
        background.append(asyncio.create_task(_flush_periodically(access_log)))
        if settings.scrub_interval > 0:
            background.append(asyncio.create_task(_scrub_periodically(storage, settings, scrub_stop)))
        await stop.wait()
        log.info("stopping: no new connections, draining %d request(s) in flight (up to %gs)",
                 http.busy_connections(), settings.drain_timeout)
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
        if syncer is not None:
            await loop.run_in_executor(None, syncer.close)
        await loop.run_in_executor(None, storage.close)
        access_log.close()
        log.info("stopped")


def _reload_tokens(tokens: TokenStore, why: str) -> None:
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
            _reload_tokens(tokens, "file changed")


async def _flush_periodically(access_log: AccessLog) -> None:
    while True:
        await asyncio.sleep(ACCESS_LOG_FLUSH_S)
        access_log.flush()


async def _scrub_periodically(storage: DiskStorage, settings: Settings, stop: threading.Event) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(settings.scrub_interval)
        report = await loop.run_in_executor(
            None, lambda: storage.scrub(max_bytes_per_s=settings.scrub_rate, stop=stop)
        )
        log.info("scrub: %d entries checked, %d damaged (quarantined), %d bytes read",
                 report.checked, report.damaged, report.bytes_read)
