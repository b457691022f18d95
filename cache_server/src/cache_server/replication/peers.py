"""What the worker processes of one server (`--workers N`) tell each other.

Each worker holds a replica of the storage index. Every change it makes (an entry
published, evicted or found gone; a hit, for LRU order) goes to the other workers as
a line in a datagram, so their replicas follow within ANNOUNCE_DELAY_S (hits: within
TOUCH_FLUSH_S). /metrics and /health ask every other worker for its counters and add
them up; a worker answers only after sending its pending changes, and each inbox is
read in order, so the totals include every request answered before the question.

Lines (keys are validated: ASCII letters and digits only, so a space-separated text
format is safe):

    A <key> <size>        added to the index
    R <key>               removed from the index
    T <key> <key> ...     hits since the last T (no order among them)
    Q <worker> <id>       question: send me your counters
    S <id> <json>         answer: the counters (`Metrics.snapshot()`)

Transport: one datagram socketpair per worker, made before the fork; a worker reads
its own inbox and writes to everybody else's. A full inbox keeps the lines here and
retries when the socket is writable again; a peer that is gone is skipped.

Announcement counters: a page of shared memory, also made before the fork, where
each worker counts the A lines it has queued (it alone writes its slot, and bumps it
before the line is sent and before the upload is answered). A worker that has read
as many A lines as the others' slots add up to knows every entry they published, so
a key its replica lacks is a miss without a look on disk. Otherwise (lines in flight,
or dropped for a peer that stopped reading) it looks on disk as before.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import mmap
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..chunks import whole_chunks
from .storage import SharedDiskStorage

log = logging.getLogger("cache_server")

TOUCH_FLUSH_S = 0.1
# Added/removed lines wait this long to share a datagram: one per upload would wake an idle
# peer per upload, which costs more CPU than the upload itself. A peer that has not read them
# yet looks on disk (see caught_up), so no answer depends on this delay.
ANNOUNCE_DELAY_S = 0.002
ANSWER_TIMEOUT_S = 2.0
OUTBOX_MAX_DATAGRAMS = 1024  # per peer, on top of its socket buffer
_DATAGRAM_MAX = 60_000
_BUFFER_BYTES = 1 << 20

Snapshot = dict[str, Any]


def make_inboxes(workers: int) -> list[tuple[socket.socket, socket.socket]]:
    """Before the fork: (read end, write end) of each worker's inbox."""
    pairs = []
    for _ in range(workers):
        read_end, write_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sock, option in ((read_end, socket.SO_RCVBUF), (write_end, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER_BYTES)
            except OSError:
                pass  # the kernel's default then; a full inbox is retried anyway
            sock.setblocking(False)
        pairs.append((read_end, write_end))
    return pairs


def make_announcements(workers: int) -> memoryview:
    """Before the fork: one shared counter per worker of the A lines it has queued."""
    return memoryview(mmap.mmap(-1, 8 * workers)).cast("Q")  # anonymous and MAP_SHARED: one page for all


class _Outbox:
    """Lines waiting for one peer, sent as datagrams of whole lines."""

    __slots__ = ("sock", "waiting", "gone", "lagging")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waiting: deque[bytes] = deque()
        self.gone = False
        self.lagging = False


class PeerLink:
    """One worker's side: tells the others of its index changes and applies theirs."""

    def __init__(self, worker: int, inbox: socket.socket, outboxes: dict[int, socket.socket],
                 announced: memoryview | None = None) -> None:
        self.worker = worker
        self._announced = announced  # make_announcements(); None: never sure, always look on disk
        self._announce_lock = threading.Lock()  # `added` may come from any thread of this worker
        self._heard = 0  # A lines read from the others
        self._inbox = inbox
        self._peers = {index: _Outbox(sock) for index, sock in outboxes.items()}
        self._pending: deque[str] = deque()  # appended from any thread
        self._touched: set[str] = set()
        self._flush_scheduled = False
        self._questions = itertools.count(1)
        self._asked: dict[int, tuple[dict[int, Snapshot], Callable[[list[Snapshot]], None], asyncio.TimerHandle]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._storage: SharedDiskStorage | None = None
        self._snapshot: Callable[[], Snapshot] = dict
        self._touch_timer: asyncio.TimerHandle | None = None

    def start(self, storage: SharedDiskStorage, snapshot: Callable[[], Snapshot]) -> None:
        """On the worker's event loop: listen to the others, and tell them of this index's changes."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._storage = storage
        self._snapshot = snapshot
        self._loop.add_reader(self._inbox.fileno(), self._read_inbox)
        self._touch_timer = self._loop.call_later(TOUCH_FLUSH_S, self._flush_touches)
        storage.peers = self

    def close(self) -> None:
        if self._storage is not None:
            self._storage.peers = None
        if self._loop is not None:
            self._flush()
            self._loop.remove_reader(self._inbox.fileno())
            for outbox in self._peers.values():
                if outbox.waiting:
                    self._loop.remove_writer(outbox.sock.fileno())
        if self._touch_timer is not None:
            self._touch_timer.cancel()
        for _, done, timer in self._asked.values():
            timer.cancel()
        self._asked.clear()

    # ------------------------------------------------ IndexObserver (any thread)

    def added(self, key: str, size: int) -> None:
        if self._announced is not None:
            with self._announce_lock:
                self._announced[self.worker] += 1
        self._queue(f"A {key} {size}")

    def caught_up(self) -> bool:
        """Every entry the other workers have announced is in this replica (see the module doc)."""
        announced = self._announced
        return announced is not None and sum(announced) - announced[self.worker] == self._heard

    def removed(self, key: str) -> None:
        self._touched.discard(key)
        self._queue(f"R {key}")

    def touched(self, key: str) -> None:
        self._touched.add(key)

    def _queue(self, line: str) -> None:
        self._pending.append(line)
        if self._flush_scheduled or self._loop is None:
            return
        self._flush_scheduled = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_later(ANNOUNCE_DELAY_S, self._flush)
        else:
            self._loop.call_soon_threadsafe(self._loop.call_later, ANNOUNCE_DELAY_S, self._flush)

    # ------------------------------------------------------------------ sending

    def _flush(self) -> None:
        self._flush_scheduled = False
        lines = []
        pending = self._pending
        while pending:
            lines.append(pending.popleft())
        if lines:
            self._send_all(lines)

    def _flush_touches(self) -> None:
        assert self._loop is not None
        self._touch_timer = self._loop.call_later(TOUCH_FLUSH_S, self._flush_touches)
        if not self._touched:
            return
        touched, self._touched = self._touched, set()
        # Several T lines of bounded length, so that each fits a datagram on its own.
        runs = whole_chunks(" ".join(touched).encode("ascii") + b" ", _DATAGRAM_MAX // 2, b" ")
        self._send_all(["T " + run[:-1].decode("ascii") for run in runs])

    def _send_all(self, lines: list[str]) -> None:
        datagrams = _pack(lines)
        for index in self._peers:
            self._enqueue(index, datagrams)

    def _send_to(self, index: int, lines: list[str]) -> None:
        if index in self._peers:
            self._enqueue(index, _pack(lines))

    def _enqueue(self, index: int, datagrams: list[bytes]) -> None:
        outbox = self._peers[index]
        if outbox.gone:
            return
        if len(outbox.waiting) >= OUTBOX_MAX_DATAGRAMS:
            # A worker that stopped reading (stuck, or stopped with SIGSTOP) must not make this
            # one grow without bound. Its replica falls behind: unknown keys are still found on
            # disk and vanished files still read as misses, but its LRU order is off and an
            # evicted small entry may stay in its memory cache until the hourly re-read.
            if not outbox.lagging:
                log.warning("worker %d: worker %d is not reading its messages; dropping them, its index "
                            "will lag", self.worker, index)
                outbox.lagging = True
            outbox.waiting.clear()
        outbox.waiting.extend(datagrams)
        self._drain(index)

    def _drain(self, index: int) -> None:
        outbox = self._peers[index]
        while outbox.waiting:
            try:
                outbox.sock.send(outbox.waiting[0])
            except BlockingIOError:
                assert self._loop is not None
                self._loop.add_writer(outbox.sock.fileno(), self._drain_blocked, index)
                return
            except OSError as exc:
                # The peer has exited (shutdown, or a crash the supervisor is handling).
                log.debug("worker %d: peer %d unreachable: %s", self.worker, index, exc)
                outbox.gone = True
                outbox.waiting.clear()
                return
            outbox.waiting.popleft()
        outbox.lagging = False

    def _drain_blocked(self, index: int) -> None:
        assert self._loop is not None
        self._loop.remove_writer(self._peers[index].sock.fileno())
        self._drain(index)

    # ---------------------------------------------------------------- receiving

    def _read_inbox(self) -> None:
        while True:
            try:
                data = self._inbox.recv(1 << 17)
            except OSError:  # empty (BlockingIOError), or closed at shutdown
                return
            for line in data.decode("ascii", "replace").split("\n"):
                if line:
                    self._apply(line)

    def _apply(self, line: str) -> None:
        storage = self._storage
        assert storage is not None
        op, _, rest = line.partition(" ")
        if op == "A":
            key, _, size = rest.partition(" ")
            storage.replica_added(key, int(size))
            self._heard += 1
        elif op == "R":
            storage.replica_removed(rest)
        elif op == "T":
            storage.replica_touched(rest.split(" "))
        elif op == "Q":
            asker, _, question = rest.partition(" ")
            self._flush()  # changes first: the asker applies them before it reads the answer
            self._send_to(int(asker), [f"S {question} {json.dumps(self._snapshot(), separators=(',', ':'))}"])
        elif op == "S":
            question, _, payload = rest.partition(" ")
            entry = self._asked.get(int(question))
            if entry is None:
                return  # answered after the timeout
            answers, done, timer = entry
            answers[len(answers)] = json.loads(payload)
            if len(answers) >= self._reachable():
                timer.cancel()
                del self._asked[int(question)]
                done(list(answers.values()))
        else:
            log.warning("worker %d: unknown message from a peer: %.40r", self.worker, line)

    # ---------------------------------------------------------------- questions

    def _reachable(self) -> int:
        return sum(1 for outbox in self._peers.values() if not outbox.gone)

    def gather(self, done: Callable[[list[Snapshot]], None]) -> None:
        """Ask every other worker for its counters; `done(snapshots)` on the loop once all have
        answered, or after ANSWER_TIMEOUT_S with those that did."""
        assert self._loop is not None
        if not self._reachable():
            self._loop.call_soon(done, [])
            return
        question = next(self._questions)
        answers: dict[int, Snapshot] = {}

        def give_up() -> None:
            if self._asked.pop(question, None) is not None:
                log.warning("worker %d: %d of %d other worker(s) did not answer within %gs; totals are partial",
                            self.worker, self._reachable() - len(answers), self._reachable(), ANSWER_TIMEOUT_S)
                done(list(answers.values()))

        self._asked[question] = (answers, done, self._loop.call_later(ANSWER_TIMEOUT_S, give_up))
        self._send_all([f"Q {self.worker} {question}"])


def _pack(lines: list[str]) -> list[bytes]:
    """Whole lines into datagrams of at most _DATAGRAM_MAX bytes (a longer line goes alone)."""
    if not lines:
        return []
    return whole_chunks(("\n".join(lines) + "\n").encode("ascii", "replace"), _DATAGRAM_MAX)
