"""The contract every storage backend meets. Types only, no I/O.

Implementations are safe for concurrent use from the event loop thread plus
worker threads (fsync, scrub). A miss is `None`, never an exception.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import NamedTuple, Protocol

from ..namespaces import is_storage_key


def is_valid_key(key: str) -> bool:
    """A storage key: a request hash, or `{hash}_{namespace}` (namespaces.py)."""
    return is_storage_key(key)


def require_key(key: str) -> None:
    if not is_valid_key(key):
        raise ValueError(f"invalid cache key {key[:40]!r}: letters and digits (1-128), then optionally _<namespace>")


class Blob:
    """A hit. Either `inline` holds the whole (already verified) body, or
    `fd` is an open descriptor whose bytes `[offset, offset+size)` are the body.
    The caller closes it. The body stays readable even if the entry is evicted
    meanwhile: POSIX keeps an unlinked file alive while a descriptor is open.
    """

    __slots__ = ("size", "inline", "fd", "offset")

    def __init__(self, size: int, inline: bytes | None = None, fd: int = -1, offset: int = 0) -> None:
        self.size = size
        self.inline = inline
        self.fd = fd
        self.offset = offset

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Staged(NamedTuple):
    """What `Upload.stage` leaves for durability: the file's contents (`fd`, the caller's to
    fsync), then its name in `directory`, synced once for every upload staged there together.
    A named tuple: made once per upload, at a third of a frozen dataclass's cost."""

    fd: int
    directory: str


class Upload(Protocol):
    """An upload in progress. Nothing is visible to readers before `commit`."""

    @property
    def written(self) -> int:
        """Body bytes accepted so far."""

    def write(self, chunk: bytes) -> None:
        """Append body bytes. Raises `NotStored` on a storage fault."""

    def commit(self) -> None:
        """Verify the length and publish atomically. May block (fsync): call off the loop.

        Raises `IncompleteUpload`, `EntryExists` (lost a race) or `NotStored`.
        """

    def finish(self, done: Callable[[BaseException | None], None]) -> None:
        """`commit` from the event loop, never blocking it: `done(error)` is called on the loop
        with what `commit` would raise, or None; at once, or after the storage's batched fsync."""

    def abort(self) -> None:
        """Discard everything; idempotent, safe after `commit` or `stage`."""


@dataclass(frozen=True, slots=True)
class StorageStats:
    entries: int
    bytes: int
    max_bytes: int
    reserved_bytes: int
    memory_bytes: int  # small bodies held in memory (--memory-cache)
    free_disk_bytes: int
    min_free_disk_bytes: int
    free_disk_files: int = -1  # free inodes; -1 when the filesystem sets no limit
    min_free_disk_files: int = 0
    max_entries: int = 0  # --max-entries; 0: no cap


@dataclass(slots=True)
class StorageFault:
    """The last storage error, for /health: when, during what, and the OS's words."""

    at: float
    op: str
    message: str


@dataclass(slots=True)
class StorageCounters:
    """Plain integers bumped on the hot path; /metrics reads them at scrape time."""

    evictions: int = 0
    memory_hits: int = 0
    evicted_bytes: int = 0
    damaged: int = 0
    errors: int = 0
    swept_at_start: int = 0
    last_error: StorageFault | None = None


class Storage(Protocol):
    remote: bool  # True: read through `fetch` (RemoteStorage), never `get`
    max_artifact_bytes: int
    fsync: bool  # True when `Upload.commit` may block (call it off the event loop)
    counters: StorageCounters

    def get(self, key: str) -> Blob | None:
        """Open an entry for reading; a damaged entry is quarantined and reads as a miss."""

    def contains(self, key: str) -> bool:
        """Whether the key is stored (cheap, no I/O)."""

    def begin_put(self, key: str, size: int, *, exact: bool = False, owner: str = "") -> Upload:
        """Reserve room for `size` body bytes. Raises `EntryExists`,
        `ArtifactTooLarge` or `NotStored` before any byte is read. A key that another
        process stored a moment ago may instead be refused at commit (`EntryExists`),
        unless `exact` asks to find that out now, at some cost."""

    def stats(self) -> StorageStats:
        """Counters for /health and /metrics."""


class RemoteStorage(Storage, Protocol):
    """A storage whose reads wait on the network (the S3 backend): `remote` is True, and the HTTP
    layer reads through `fetch` instead of `get`."""

    def fetch(self, keys: list[str], done: Callable[[Blob | None], None]) -> None:
        """The first of `keys` that is stored, or None, passed to `done` on the event loop."""
