"""`--workers N`: N server processes on one address and one storage directory.

Why: a cache hit is mostly per-request CPU (parse, syscalls, wake-ups), and one
CPython event loop uses one core. Each worker is the whole server (its own loop,
memory cache and fsync batcher) behind its own listening socket; SO_REUSEPORT
makes the kernel spread connections over those sockets evenly.

This process opens the storage once (sweeps leftovers, loads the index), binds
every socket, forks the workers and then only supervises: it passes SIGTERM,
SIGINT and SIGHUP on, and when a worker dies unexpectedly it stops the others and
exits non-zero, so systemd restarts the whole server. Workers die with it
(PR_SET_PDEATHSIG), so a `kill -9` of this process leaves no orphan serving.

Sharing the storage: see replication/ (index replicas) and storage/disk.py. The size
cap is checked by each worker against its replica plus its own uploads in
flight, so the total may pass the cap by the other workers' uploads in flight
until their entries are announced and evicted for; the free-disk headroom is
checked against the filesystem itself by every upload.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading

from .auth import TokenStore
from .config import Settings
from .replication.peers import PeerLink, make_announcements, make_inboxes
from .storage.disk import DiskStorage
from .storage.s3 import S3Storage
from .http.server import (LISTEN_BACKLOG, Worker, listen_error, log_listening, open_storage, reload_tokens, serve,
                          shared_index)
from .loops import run

log = logging.getLogger("cache_server")

_PR_SET_PDEATHSIG = 1
_FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def bind_all(settings: Settings) -> list[list[socket.socket]]:
    """Every worker's listening sockets: for each `--bind`, one SO_REUSEPORT socket per worker."""
    per_worker: list[list[socket.socket]] = [[] for _ in range(settings.workers)]
    try:
        for host, port in settings.binds:
            port = _claim(host, port)
            for sockets in per_worker:
                sockets.append(_reuseport_socket(host, port))
    except BaseException:
        for sockets in per_worker:
            for sock in sockets:
                sock.close()
        raise
    return per_worker


def _claim(host: str, port: int) -> int:
    """Bind once without SO_REUSEPORT, so an address already served (by another copy of this
    server too) is an error here instead of a silent share; the port to use (for port 0)."""
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return int(probe.getsockname()[1])
    except OSError as exc:
        raise listen_error(host, port, exc) from None
    finally:
        probe.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = _family(host)
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it a sendfile's last segment waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise listen_error(host, port, exc) from None
    return sock


def run_workers(settings: Settings, tokens: TokenStore) -> int:
    """Fork the workers, supervise them until they have all exited; the exit code."""
    storage = open_storage(settings)
    shared_index(storage)  # the disk backend's directory, or the S3 backend's tier, kept in step
    if isinstance(storage, S3Storage):
        storage.store.warm()
    listeners = bind_all(settings)
    storage.flush()  # no deletion thread may hold the index lock across the fork
    inboxes = make_inboxes(settings.workers)
    announced = make_announcements(settings.workers)
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, int] = {}
    supervisor = _Supervisor(children)
    # Blocked in this thread while forking, so that a child starts with none pending. The mask is
    # per thread: the storage's deleter thread may still take a signal for the process, and its
    # handler then runs here between two forks; the supervisor holds a stop until all exist.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    for index in range(settings.workers):
        pid = os.fork()
        if pid == 0:
            _run_worker(index, parent, settings, tokens, storage, listeners, inboxes, announced)  # never returns
        children[pid] = index
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    supervisor.all_forked()
    # Connections queue on the bound sockets meanwhile, so this line means "ready".
    for sock in listeners[0]:
        log_listening(sock, settings, len(tokens), settings.workers)
    for sockets in listeners:
        for sock in sockets:
            sock.close()
    for read_end, write_end in inboxes:
        read_end.close()
        write_end.close()
    return supervisor.wait()


def _run_worker(index: int, parent: int, settings: Settings, tokens: TokenStore, storage: DiskStorage | S3Storage,
                listeners: list[list[socket.socket]], inboxes: list[tuple[socket.socket, socket.socket]],
                announced: memoryview) -> None:
    code = 1
    stop_asked = threading.Event()
    try:
        # Until serve() installs the worker's own handlers, a stop is only noted (serve() looks
        # once it listens for stops itself): an exception raised by a handler inside the event
        # loop's start-up would leave the loop half made, and the worker exiting 1.
        signal.signal(signal.SIGTERM, lambda signum, frame: stop_asked.set())
        signal.signal(signal.SIGINT, lambda signum, frame: stop_asked.set())
        signal.signal(signal.SIGHUP, lambda signum, frame: reload_tokens(tokens, "SIGHUP"))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        _die_with(parent)
        for other, sockets in enumerate(listeners):
            if other != index:
                for sock in sockets:
                    sock.close()
        for other, (read_end, write_end) in enumerate(inboxes):
            if other == index:
                write_end.close()
            else:
                read_end.close()
        shared_index(storage).after_fork()  # its memory cache was sized per worker when the storage opened
        peers = PeerLink(index, inboxes[index][0], {other: inboxes[other][1] for other in range(len(inboxes)) if other != index},
                         announced)
        run(serve(settings, tokens, worker=Worker(index, storage, listeners[index], peers, stop_asked)),
            settings.event_loop)
        code = 0
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _die_with(parent: int) -> None:
    """Get SIGKILL when the supervisor dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: a killed supervisor leaves workers that stop on their own SIGTERM
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


class _Supervisor:
    """Passes stop and reload signals on to the workers; one crashed worker stops them all."""

    def __init__(self, children: dict[int, int]) -> None:
        self.children = children  # pid -> worker index
        self.stopping = False
        self._forking = True
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda signum, frame: self._signal_all(signal.SIGHUP))

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.stopping:
            return  # the workers have heard it (systemd also signals each of them itself)
        self.stopping = True
        if not self._forking:
            self._signal_all(signal.SIGTERM)

    def all_forked(self) -> None:
        """Every worker exists: a stop that came while forking reaches them all now."""
        self._forking = False
        if self.stopping:
            self._signal_all(signal.SIGTERM)

    def wait(self) -> int:
        code = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index = self.children.pop(pid, None)
            if index is None:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            if not self.stopping:
                how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
                log.error("worker %d %s; stopping the other %d so that the whole server restarts",
                          index, how, len(self.children))
                self.stopping = True
                code = 1
                self._signal_all(signal.SIGTERM)
            elif exit_code not in (0, -signal.SIGTERM):  # SIGTERM while stopping: asked for
                code = 1
        log.info("stopped")
        return code
