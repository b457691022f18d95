"""Evicted entries on their way out.

An entry is renamed into `trash/` under the storage's lock, so that a new upload of the same
key cannot collide with the old file, then unlinked by one background thread (or at once,
when an inode is needed now). Until then its room counts as about to be free (room.py).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .room import Room


class Trash:
    def __init__(self, directory: str, room: Room, lock: threading.Lock,
                 record_error: Callable[[str, str], None]) -> None:
        self.directory = directory
        self._room = room
        self._lock = lock  # the storage's
        self._record_error = record_error
        self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-delete")

    def move_locked(self, key: str, path: str, size: int) -> str | None:
        """Under the lock: the entry file at `path` into the trash; its new path, or None when
        it was gone already. Raises OSError."""
        trash = os.path.join(self.directory, f"{key}.{secrets.token_hex(4)}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        self._room.pending_delete += size
        self._room.pending_delete_files += 1
        return trash

    def empty_soon(self) -> None:
        self._deleter.submit(self._empty)

    def _empty(self) -> None:
        with os.scandir(self.directory) as it:
            self.unlink([(item.path, -1) for item in it])

    def unlink(self, files: list[tuple[str, int]]) -> None:
        """Delete trashed files (size -1: read it) and give their room back."""
        room = self._room
        for path, size in files:
            try:
                if size < 0:
                    size = room.charge(os.lstat(path).st_size)
                os.unlink(path)
            except FileNotFoundError:
                continue  # the other deleter was first
            except OSError as exc:
                self._record_error("evict", f"unlink: {exc.strerror}")
                continue
            with self._lock:
                room.pending_delete = max(0, room.pending_delete - size)
                room.pending_delete_files = max(0, room.pending_delete_files - 1)

    def after_fork(self, lock: threading.Lock) -> None:
        """In a freshly forked process: the storage's new lock, and a deleter thread of its own."""
        self._lock = lock
        self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-delete")

    def flush(self) -> None:
        """Wait for background deletions (tests, shutdown)."""
        self._deleter.submit(lambda: None).result()

    def close(self) -> None:
        self._deleter.shutdown(wait=True)
