"""fsync for many uploads from one thread, completions handed back to the event loop in batches.

A thread-pool hop per upload (run_in_executor) cost ~300 us of CPU here in thread
wake-ups and GIL hand-offs, more than everything else a small PUT does. The loop hands
over the uploads of each loop pass together; this thread only calls fsync (which
releases the GIL), takes whatever was handed over while it was busy as one batch, and
wakes the loop once per batch. A journaling filesystem
commits the first fsync's transaction for the whole batch, so the later ones are cheap.

Each fsync also costs two GIL hand-overs with the loop thread, so a directory is synced
once per batch, after the files of every upload linked into it: not once per upload.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable

from .base import Staged

Done = Callable[[OSError | None], None]


def fsync_directory(path: str) -> None:
    """Make the names linked into `path` durable. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_staged(batch: list[Staged]) -> list[OSError | None]:
    """fsync each staged file, then each of their directories once; the error for each upload."""
    errors: list[OSError | None] = []
    directories: dict[str, list[int]] = {}  # directory -> the uploads whose names it holds
    for index, staged in enumerate(batch):
        try:
            os.fsync(staged.fd)
        except OSError as exc:
            errors.append(exc)
            continue
        errors.append(None)
        directories.setdefault(staged.directory, []).append(index)
    for directory, indexes in directories.items():
        try:
            fsync_directory(directory)
        except OSError as exc:
            for index in indexes:
                errors[index] = exc
    return errors


class BatchSyncer:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 sync: Callable[[list[Staged]], list[OSError | None]] = sync_staged) -> None:
        self._loop = loop
        self._sync = sync  # a parameter, so tests can stand in for fsync
        self._pending: list[tuple[Staged, Done]] = []
        self._submitted: list[tuple[Staged, Done]] = []  # this loop pass's, not yet handed over
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="cache-fsync", daemon=True)
        self._worker.start()

    def submit(self, staged: Staged, done: Done) -> None:
        """From the loop: make `staged` durable, then call `done(error)` on the loop.

        Uploads submitted in one loop pass are handed to the thread together, after the pass:
        one wake-up of the thread per pass rather than per upload."""
        if not self._submitted:
            self._loop.call_soon(self._hand_over)
        self._submitted.append((staged, done))

    def _hand_over(self) -> None:
        batch, self._submitted = self._submitted, []
        with self._cond:
            self._pending.extend(batch)
            self._cond.notify()

    def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            errors = self._sync([staged for staged, _ in batch])
            results = [(done, error) for (_, done), error in zip(batch, errors)]
            try:
                self._loop.call_soon_threadsafe(_deliver, results)
            except RuntimeError:
                return  # the loop is closed: the server is gone


def _deliver(results: list[tuple[Done, OSError | None]]) -> None:
    for done, error in results:
        done(error)
