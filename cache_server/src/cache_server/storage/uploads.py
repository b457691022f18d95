"""Uploads in flight: a small body collected in memory, a large one streamed into `tmp/`.

Each holds what the storage promised it (`charge`, see room.py) and counts the bytes that
arrived; only those evict. Its file is created when its first bytes go to disk, so a head
whose body never comes takes no inode either. Publishing (link, sync, index) is the
storage's (disk.py); see `Upload` in base.py for the contract.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import Staged
from .entry_format import HEADER_SIZE, digest_of, finished_header, new_hasher
from .errors import IncompleteUpload, NotStored, StorageError
from .syncer import sync_staged

if TYPE_CHECKING:
    from .disk import DiskStorage

_NO_HASHER = new_hasher()  # a placeholder until a DiskUpload's first byte, never fed


class _Upload:
    """What both uploads share: the size checks, one finish (stage or abort), the staged commit.

    `_finishing` is taken by whichever of stage/commit and abort comes first; commit may run
    in a worker thread while the event loop calls abort, and only the first may act.
    """

    __slots__ = ("_storage", "key", "size", "charge", "written", "owner", "arrived", "_fd", "_tmp_path", "_finishing",
                 "_chunks", "_hasher")

    def __init__(self, storage: DiskStorage, key: str, size: int, charge: int, owner: str) -> None:
        self._storage = storage
        self.key = key
        self.size = size
        self.charge = charge
        self.written = 0
        self.owner = owner
        self.arrived = 0  # bytes counted in the storage's arrived total (the body so far, then the header)
        self._fd = -1
        self._tmp_path = ""  # set once the upload has a file
        self._finishing = threading.Lock()
        self._chunks: list[bytes] = []  # SmallUpload: the body so far
        self._hasher = _NO_HASHER  # DiskUpload: the body's checksum so far, from its first byte

    def _arrive(self, nbytes: int) -> None:
        self._storage.arrive(nbytes)
        self.arrived += nbytes

    def _create_file(self) -> None:
        self._fd, self._tmp_path = self._storage.new_upload_file(self.key)

    def _check_room(self, chunk: bytes) -> None:
        if self.written + len(chunk) > self.size:
            self.abort()
            raise IncompleteUpload(f"body is longer than Content-Length {self.size}")

    def _begin_finish(self) -> None:
        if not self._finishing.acquire(blocking=False):
            raise RuntimeError("upload already finished")
        if self.written != self.size:
            self._discard()
            raise IncompleteUpload(f"got {self.written} of {self.size} bytes")

    def _discard(self) -> None:
        """Called exactly once, by whoever took `_finishing`: nothing of the upload is left."""
        if self._fd >= 0:
            close_quietly(self._fd)
            self._fd = -1
        if self._tmp_path:
            unlink_quietly(self._tmp_path)
        self._storage.release(self.owner, self.charge, self.arrived, 1 if self._tmp_path else 0)

    def _fail(self, what: str, exc: OSError) -> NotStored:
        """Under `_finishing`: drop the upload after a failed write; the error to raise."""
        self._discard()
        self._storage.write_failed(f"{what} {self.key}", exc)
        return NotStored(f"not stored: {exc.strerror}")

    def _staged(self) -> Staged:
        fd, self._fd = self._fd, -1  # from here on the storage owns it
        return self._storage.stage_file(self.key, fd, self._tmp_path, self.charge, self.owner, self.arrived)

    def stage(self) -> Staged:
        raise NotImplementedError

    def publish(self, staged: Staged, error: OSError | None) -> None:
        """After `staged` was synced: index the entry, or withdraw it."""
        self._storage.publish_file(self.key, staged, self.charge, error, self.owner, self.arrived)

    def commit(self) -> None:
        """Stage, sync inline when the storage asks for it, publish."""
        staged = self.stage()
        self.publish(staged, sync_staged([staged])[0] if self._storage.fsync else None)

    def finish(self, done: Callable[[BaseException | None], None]) -> None:
        """From the event loop: commit, and call `done(error)` on the loop (a StorageError, or None
        once published). At once without fsync; with it, once the storage's batched sync is done."""
        syncer = self._storage.syncer
        if syncer is None:
            try:
                self.commit()
            except StorageError as exc:
                done(exc)
                return
            done(None)
            return
        try:
            staged = self.stage()
        except StorageError as exc:
            done(exc)
            return

        def synced(error: OSError | None) -> None:
            try:
                self.publish(staged, error)
            except StorageError as exc:
                done(exc)
                return
            done(None)

        syncer.submit(staged, synced)

    def abort(self) -> None:
        if self._finishing.acquire(blocking=False):
            self._discard()


class SmallUpload(_Upload):
    """An upload of at most INLINE_MAX bytes: collected in memory, written whole at commit.

    Nothing touches the disk before `commit`, so an interrupted upload leaves nothing.
    """

    __slots__ = ()

    def write(self, chunk: bytes) -> None:
        self._check_room(chunk)
        self._chunks.append(chunk)
        self.written += len(chunk)

    def stage(self) -> Staged:
        """First half of a commit, never blocking on a sync: write and link."""
        self._begin_finish()
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        data = finished_header(len(body), digest_of(body)) + body
        try:
            self._arrive(len(data))  # held in memory until now: its bytes evict when they go to disk
            self._create_file()
        except NotStored:
            self._discard()
            raise
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise self._fail("write", exc) from None
        return self._staged()

    def _discard(self) -> None:
        self._chunks = []
        super()._discard()


class DiskUpload(_Upload):
    """One upload streamed into `tmp/`, the body at its final offset, the header at commit."""

    __slots__ = ()

    def write(self, chunk: bytes) -> None:
        self._check_room(chunk)
        try:
            self._arrive(len(chunk))
            if not self._tmp_path:
                self._create_file()
                self._hasher = new_hasher()
        except NotStored:
            self.abort()
            raise
        try:
            view = memoryview(chunk)
            offset = HEADER_SIZE + self.written
            while view:
                done = os.pwrite(self._fd, view, offset)
                view = view[done:]
                offset += done
        except OSError as exc:
            self.abort()
            self._storage.write_failed(f"write {self.key}", exc)
            raise NotStored(f"not stored: {exc.strerror}") from None
        self._hasher.update(chunk)
        self.written += len(chunk)

    def stage(self) -> Staged:
        """First half of a commit, never blocking on a sync: header and link."""
        self._begin_finish()
        try:
            self._arrive(HEADER_SIZE)
            if not self._tmp_path:  # an empty body
                self._create_file()
                self._hasher = new_hasher()
        except NotStored:
            self._discard()
            raise
        try:
            os.pwrite(self._fd, finished_header(self.size, self._hasher.digest()), 0)
        except OSError as exc:
            raise self._fail("commit", exc) from None
        return self._staged()


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
