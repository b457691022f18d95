"""Filesystem backend: the default store and the index every other backend sits behind.

Layout under the storage root (one filesystem, so `link` and `rename` are atomic):

    entries/<key[:2]>/<key>   published entries (header + body, see entry_format)
    tmp/                      uploads in progress; swept at start (crash leftovers)
    trash/                    evicted entries waiting to be unlinked in the background
    quarantine/               damaged entries, kept for inspection (newest few only)

Uploads stream into `tmp/`, get their header and optional fsync, then are
published with `link()`, which fails if the name exists: first writer wins and a
racing second upload gets `EntryExists` (409). Readers never see a partial file.

The lock guards the in-memory index only; file I/O runs outside it, apart from
the metadata-only renames that must be ordered with index changes.

With several server processes (`--workers`), each holds a replica of the index.
The files stay the truth: a key missing from the replica is looked up on disk
before it is a miss, and `peers` (see http/peers.py) carries this replica's
changes to the others, which apply them with the `replica_*` methods.
"""

from __future__ import annotations

import logging
import itertools
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from ..namespaces import is_storage_key
from .base import Blob, Staged, StorageCounters, StorageFault, StorageStats
from .entry_format import (
    HEADER_SIZE,
    DamagedEntry,
    EntryHeader,
    check_digest,
    check_file_size,
    digest_of,
    finished_header,
    new_hasher,
)
from .errors import ArtifactTooLarge, EntryExists, IncompleteUpload, NotStored
from .hot import HotBodies
from .lru import SizedLRU
from .syncer import sync_staged

log = logging.getLogger("cache_server.storage")

INLINE_MAX = 64 * 1024  # bodies up to this size are read whole and digest-checked on every GET
QUARANTINE_KEEP = 64
ATIME_PERSIST_INTERVAL_S = 3600.0  # LRU order survives restarts at this granularity
STATVFS_MAX_AGE_S = 0.1  # free space is re-read at most this often; uploads in flight are reserved meanwhile
_SCRUB_CHUNK = 1 << 20


class IndexObserver(Protocol):
    """Told of every change to this index that other replicas must learn (any thread)."""

    def added(self, key: str, size: int) -> None: ...

    def removed(self, key: str) -> None: ...

    def touched(self, key: str) -> None: ...

    def caught_up(self) -> bool:
        """True when this index has every entry the other processes published: a key it lacks
        is then not on disk (unless copied in by hand), and needs no look there."""


class StorageSetupError(Exception):
    """The storage directory cannot be used (message names the path and the fix)."""


@dataclass(frozen=True, slots=True)
class ScrubReport:
    checked: int
    damaged: int
    bytes_read: int


def is_valid_key(key: str) -> bool:
    """A storage key: a request hash, or `{hash}_{namespace}` (namespaces.py)."""
    return is_storage_key(key)


def _require_key(key: str) -> None:
    if not is_valid_key(key):
        raise ValueError(f"invalid cache key {key[:40]!r}: letters and digits (1-128), then optionally _<namespace>")


class DiskStorage:
    """Size-capped LRU cache on a local filesystem. See module docstring."""

    def __init__(
        self,
        root: str,
        *,
        max_bytes: int,
        max_artifact_bytes: int,
        min_free_bytes: int | None = None,
        fsync: bool = True,
        memory_cache_bytes: int = 0,
        statvfs_max_age: float = STATVFS_MAX_AGE_S,
        max_in_flight_per_owner: int | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        self.max_artifact_bytes = max_artifact_bytes
        self.fsync = fsync
        self.counters = StorageCounters()
        self._entries_dir = os.path.join(self.root, "entries")
        self._tmp_dir = os.path.join(self.root, "tmp")
        self._trash_dir = os.path.join(self.root, "trash")
        self._quarantine_dir = os.path.join(self.root, "quarantine")
        self._lock = threading.Lock()
        self._lru = SizedLRU()
        self._hot = HotBodies(memory_cache_bytes)
        self._removals = 0  # bumped whenever a key leaves the index, so a slow read cannot refill a stale body
        self._reserved = 0  # promised by uploads in flight (their Content-Length and header)
        self._arrived = 0  # of that, what has arrived: eviction makes room for these bytes only
        self._reserved_by: dict[str, int] = {}  # per token: one token cannot promise the whole cache
        # A head promises bytes; only bytes that arrive evict. One token's promises are capped so
        # that heads without bodies cannot hold the cache's room for long.
        self.max_in_flight_per_owner = (max(max_bytes // 4, max_artifact_bytes + HEADER_SIZE)
                                        if max_in_flight_per_owner is None else max_in_flight_per_owner)
        self._pending_delete = 0
        self._atime_saved: dict[str, float] = {}
        self._shards: set[str] = set()  # shard directories known to exist
        # Upload file names: unique without a getrandom() call per upload (tmp/ is swept at start).
        self._tmp_names = itertools.count()
        self._pid = os.getpid()
        self._statvfs_max_age = statvfs_max_age
        self._statvfs_at = -1.0
        self._statvfs_free = 0
        self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-delete")
        # Set when other processes share the directory (--workers): files may appear that this
        # index has not heard of yet, and changes here are told to `peers`.
        self.peers: IndexObserver | None = None
        self._prepare_dirs()
        self.min_free_bytes = self._default_min_free() if min_free_bytes is None else min_free_bytes
        self._sweep_leftovers()
        self._load_index()

    # ----------------------------------------------------------------- setup

    def _prepare_dirs(self) -> None:
        for path in (self.root, self._entries_dir, self._tmp_dir, self._trash_dir, self._quarantine_dir):
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise StorageSetupError(
                    f"storage directory {path} cannot be created: {exc.strerror}; "
                    "pass --storage DIR with a directory this user can write"
                ) from None
        probe = os.path.join(self._tmp_dir, f".probe-{secrets.token_hex(4)}")
        try:
            with open(probe, "wb") as fh:
                fh.write(b"probe")
            os.unlink(probe)
        except OSError as exc:
            raise StorageSetupError(
                f"storage directory {self.root} is not writable: {exc.strerror}; "
                "fix its owner or permissions, or pass --storage DIR"
            ) from None

    def _default_min_free(self) -> int:
        # Keep 5% of the filesystem free, but never demand more than 2 GiB.
        st = os.statvfs(self.root)
        return min(2 << 30, st.f_blocks * st.f_frsize // 20)

    def _sweep_leftovers(self) -> None:
        """Remove uploads and deletions that a crash or kill -9 left behind."""
        swept = 0
        for directory in (self._tmp_dir, self._trash_dir):
            with os.scandir(directory) as it:
                for item in it:
                    try:
                        os.unlink(item.path)
                        swept += 1
                    except OSError as exc:
                        log.warning("cannot remove leftover %s: %s", item.path, exc.strerror)
        self.counters.swept_at_start = swept
        if swept:
            log.info("removed %d incomplete upload(s) or pending deletion(s) left by a previous run", swept)

    def _load_index(self) -> None:
        """Rebuild the LRU from disk, ordered by access time so eviction order survives restarts."""
        found: list[tuple[int, str, int]] = []
        with os.scandir(self._entries_dir) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as files:
                    for item in files:
                        if not is_valid_key(item.name) or item.name[:2] != shard.name:
                            continue
                        st = item.stat(follow_symlinks=False)
                        if st.st_size < HEADER_SIZE:
                            self._move_to_quarantine(item.path, item.name, "shorter than a header")
                            continue
                        found.append((max(st.st_atime_ns, st.st_mtime_ns), item.name, st.st_size))
        found.sort()
        for _, key, size in found:
            self._lru.add(key, size)
        victims = self._lru.evict_until(self.max_bytes)
        self._discard(victims)
        log.info("cache index: %d entries, %d bytes", len(self._lru), self._lru.total)

    # ------------------------------------------------------------------ paths

    # Paths by f-string, not os.path.join: these run several times per request, and the
    # directories are absolute and keys are letters and digits.
    def _entry_path(self, key: str) -> str:
        return f"{self._entries_dir}/{key[:2]}/{key}"

    def _shard_directory(self, key: str) -> str:
        """The entry's directory (as in `_entry_path`), created on first use: a set lookup afterwards, not a syscall."""
        shard = key[:2]
        directory = f"{self._entries_dir}/{shard}"
        if shard not in self._shards:
            os.makedirs(directory, exist_ok=True)
            self._shards.add(shard)
        return directory

    # ------------------------------------------------------------------- read

    def contains(self, key: str) -> bool:
        return key in self._lru

    def get(self, key: str) -> Blob | None:
        peers = self.peers
        with self._lock:
            known = self._lru.touch(key)
            if known:  # only valid keys enter the index: no need to check this one again
                body = self._hot.get(key)
                # Once per ATIME_PERSIST_INTERVAL_S a hit goes to disk anyway: it re-verifies the
                # file and persists the access time that orders eviction after a restart.
                if body is not None and time.monotonic() - self._atime_saved.get(key, -ATIME_PERSIST_INTERVAL_S) < ATIME_PERSIST_INTERVAL_S:
                    self.counters.memory_hits += 1
                    if peers is not None:
                        peers.touched(key)
                    return Blob(len(body), inline=body)
            else:
                _require_key(key)
                if peers is None or peers.caught_up():
                    return None
            removals = self._removals
        # Unknown keys reach here only when another process may have just published them.
        try:
            fd = os.open(self._entry_path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if known:
                self._forget(key)
            return None
        except OSError as exc:
            self._record_error("get", f"open {key}: {exc.strerror}")
            return None
        try:
            st = os.fstat(fd)
            header = EntryHeader.unpack(os.pread(fd, HEADER_SIZE, 0))
            check_file_size(header, st.st_size)
            self._persist_atime(key, fd, st.st_mtime_ns)
            if header.body_size <= INLINE_MAX:
                body = os.pread(fd, header.body_size, HEADER_SIZE)
                check_digest(header, body)
                os.close(fd)
                blob = Blob(header.body_size, inline=body)
            else:
                blob = Blob(header.body_size, fd=fd, offset=HEADER_SIZE)
        except DamagedEntry as exc:
            self._quarantine_open(key, fd, str(exc))
            return None
        except OSError as exc:
            os.close(fd)
            self._record_error("get", f"read {key}: {exc.strerror}")
            return None
        if not known:
            self._index_found(key, st.st_size)
        elif peers is not None:
            peers.touched(key)
        if blob.inline is not None and self._hot.max_bytes:
            with self._lock:
                if self._removals == removals and key in self._lru:
                    self._hot.put(key, blob.inline)
        return blob

    def _persist_atime(self, key: str, fd: int, mtime_ns: int) -> None:
        now = time.monotonic()
        if now - self._atime_saved.get(key, -ATIME_PERSIST_INTERVAL_S) < ATIME_PERSIST_INTERVAL_S:
            return
        self._atime_saved[key] = now
        try:
            os.utime(fd, ns=(time.time_ns(), mtime_ns))
        except OSError:
            pass  # read-only storage still serves; the order is only approximate after a restart

    # ------------------------------------------------------------------ write

    def begin_put(self, key: str, size: int, *, exact: bool = False, owner: str = "") -> SmallUpload | DiskUpload:
        """Accept an upload of `size` bytes for `owner` (the token): it must fit the cache beside
        the other uploads in flight and the owner's cap, and the disk if the cache were emptied.
        Nothing is evicted here: only bytes that arrive evict (`_arrive`)."""
        _require_key(key)
        if size < 0:
            raise ValueError("negative size")
        if size > self.max_artifact_bytes:
            raise ArtifactTooLarge(
                f"artifact of {size} bytes is over the {self.max_artifact_bytes}-byte limit (--max-artifact-size)"
            )
        file_size = size + HEADER_SIZE
        peers = self.peers
        if peers is not None:
            # The replica may lag the files by a moment either way; a 409 must be true on disk.
            if key in self._lru:
                if not os.path.lexists(self._entry_path(key)):
                    self._forget(key)  # evicted or quarantined by another worker a moment ago
            elif (exact or size > INLINE_MAX) and not peers.caught_up() and os.path.lexists(self._entry_path(key)):
                # Published by another worker a moment ago. Only worth a look for a body that would
                # be written to disk, or when asked: a small one is held in memory and the link
                # refuses a duplicate at commit, while under steady uploads the replica is never
                # quite caught up and the look cost every small PUT an lstat (~10% of its CPU with
                # two workers).
                self._adopt(key)
        with self._lock:
            if key in self._lru:
                raise EntryExists(f"{key} is already stored")
            if self.max_bytes - self._reserved - file_size < 0:
                raise NotStored(f"not stored: {file_size} bytes do not fit the cache's {self.max_bytes}-byte cap")
            held = self._reserved_by.get(owner, 0)
            if held + file_size > self.max_in_flight_per_owner:
                raise NotStored(f"not stored: {owner or 'this token'} has {held} bytes of uploads in flight; "
                                f"{file_size} more would pass its cap of {self.max_in_flight_per_owner}")
            self._check_disk_headroom(file_size)
            self._reserved += file_size
            self._reserved_by[owner] = held + file_size
        if size <= INLINE_MAX:
            return SmallUpload(self, key, size, owner)
        tmp_path = self._tmp_path(key)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self._release(owner, file_size, 0)
            self._record_error("put", f"create upload file: {exc.strerror}")
            raise NotStored(f"not stored: {exc.strerror}") from None
        return DiskUpload(self, key, size, fd, tmp_path, owner)

    def _tmp_path(self, key: str) -> str:
        return f"{self._tmp_dir}/{key}.{self._pid}.{next(self._tmp_names)}"

    # Every commit is staged: the name is linked first and the entry indexed only after the
    # file and its directory are synced (fsync mode; the server syncs in batches, see
    # `BatchSyncer`, `commit` inline). A crash in between
    # leaves a file the index adopts at start; if it was cut short, its size or checksum
    # check turns it into a miss.

    def _stage(self, key: str, fd: int, tmp_path: str, file_size: int, owner: str = "") -> Staged:
        """Link a fully written (fully arrived) upload under its name; the file and directory to sync."""
        try:
            directory = self._shard_directory(key)
            os.link(tmp_path, f"{directory}/{key}")
        except FileExistsError:
            _close_quietly(fd)
            _unlink_quietly(tmp_path)
            self._release(owner, file_size, file_size)
            self._adopt(key)
            raise EntryExists(f"{key} was stored by a concurrent upload") from None
        except OSError as exc:
            _close_quietly(fd)
            _unlink_quietly(tmp_path)
            self._release(owner, file_size, file_size)
            self._shards.discard(key[:2])
            self._record_error("put", f"commit {key}: {exc.strerror}")
            raise NotStored(f"not stored: {exc.strerror}") from None
        _unlink_quietly(tmp_path)
        return Staged(fd, directory)

    def _publish_staged(self, key: str, staged: Staged, file_size: int, error: OSError | None,
                        owner: str = "") -> None:
        _close_quietly(staged.fd)
        if error is not None:
            _unlink_quietly(self._entry_path(key))
            self._release(owner, file_size, file_size)
            self._record_error("put", f"fsync {key}: {error.strerror}")
            raise NotStored(f"not stored: {error.strerror}")
        with self._lock:
            self._settle_locked(owner, file_size, file_size)
            # Not into memory: a body comes in when it is first read (see `get`). Most uploads of
            # an Nx cache are never read, and each one let in would push out a body that is.
            self._lru.add(key, file_size)
        if self.peers is not None:
            self.peers.added(key, file_size)

    def _statvfs_free_locked(self) -> int:
        """Free bytes on the storage's filesystem, from statvfs at most every `statvfs_max_age`,
        plus what evicted entries waiting for deletion give back."""
        now = time.monotonic()
        if now - self._statvfs_at >= self._statvfs_max_age:
            try:
                st = os.statvfs(self.root)
            except OSError as exc:
                self._record_error_locked("put", f"statvfs: {exc.strerror}")
                raise NotStored(f"not stored: {exc.strerror}") from None
            self._statvfs_free = st.f_bavail * st.f_frsize
            self._statvfs_at = now
        return self._statvfs_free + self._pending_delete

    def _check_disk_headroom(self, file_size: int) -> None:
        """Under the lock: refuse an upload that would not fit the disk beside the other uploads'
        promises even with the cache emptied."""
        free = self._statvfs_free_locked() - (self._reserved - self._arrived)
        if self.min_free_bytes + file_size - free > self._lru.total:
            message = (
                f"not stored: disk has {max(free, 0)} bytes free and keeps {self.min_free_bytes} "
                f"free (--min-free-disk); upload needs {file_size}"
            )
            self._statvfs_at = -1.0  # a refusal is not cached: the next upload looks again
            self._record_error_locked("put", message)
            raise NotStored(message)

    def _arrive(self, nbytes: int) -> None:
        """`nbytes` of an upload arrived: evict least recently used entries until the index and
        what has arrived fit the cap, and the disk keeps its headroom; or refuse the bytes."""
        with self._lock:
            self._arrived += nbytes
            room = self.max_bytes - self._arrived  # what the index may hold besides
            # The common chunk evicts nothing: no lists or calls for it then.
            victims = self._lru.evict_until(room) if self._lru.total > room else []
            freed = sum(size for _, size in victims) if victims else 0
            # Counted as if none of the arrived bytes were in the last statvfs yet: never for
            # bytes only promised, so heads without bodies cannot make it evict.
            deficit = self.min_free_bytes - (self._statvfs_free_locked() - self._arrived + freed)
            if deficit > 0:
                if deficit > self._lru.total:
                    self._lru.restore_oldest(victims)  # refusing: nothing is evicted for nothing
                    self._arrived -= nbytes
                    message = (f"not stored: No space left on device for this upload (the disk keeps "
                               f"{self.min_free_bytes} bytes free, --min-free-disk; nothing left to evict)")
                    self._statvfs_at = -1.0  # a refusal is not cached: the next upload looks again
                    self._record_error_locked("put", message)
                    raise NotStored(message)
                victims += self._lru.evict_until(self._lru.total - deficit)
            if victims:
                self._rename_to_trash(victims)
        if victims:
            self._schedule_deletes(victims)

    def _settle_locked(self, owner: str, file_size: int, arrived: int) -> None:
        self._reserved -= file_size
        self._arrived -= arrived
        held = self._reserved_by.get(owner, 0) - file_size
        if held > 0:
            self._reserved_by[owner] = held
        else:
            self._reserved_by.pop(owner, None)

    def _release(self, owner: str, file_size: int, arrived: int) -> None:
        with self._lock:
            self._settle_locked(owner, file_size, arrived)

    # --------------------------------------------------------------- eviction

    def _rename_to_trash(self, victims: list[tuple[str, int]]) -> None:
        """Under the lock, so a new upload of the same key cannot collide with the old file."""
        for key, size in victims:
            self._let_go_locked(key)
            if self.peers is not None:
                self.peers.removed(key)
            try:
                os.rename(self._entry_path(key), os.path.join(self._trash_dir, f"{key}.{secrets.token_hex(4)}"))
            except FileNotFoundError:
                continue  # gone already: another worker evicted it first, or it was removed by hand
            except OSError as exc:
                self._record_error_locked("evict", f"{key}: {exc.strerror}")
                continue
            self._pending_delete += size
            self.counters.evictions += 1
            self.counters.evicted_bytes += size

    def _let_go_locked(self, key: str) -> None:
        """A key leaves the index: drop its memory copy and atime mark, and make sure a read in
        flight cannot put the body back (`_removals`)."""
        self._hot.discard(key)
        self._removals += 1
        self._atime_saved.pop(key, None)

    def _schedule_deletes(self, victims: list[tuple[str, int]]) -> None:
        if victims:
            self._deleter.submit(self._empty_trash)

    def _empty_trash(self) -> None:
        with os.scandir(self._trash_dir) as it:
            for item in it:
                try:
                    size = item.stat(follow_symlinks=False).st_size
                    os.unlink(item.path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self._record_error("evict", f"unlink: {exc.strerror}")
                    continue
                with self._lock:
                    self._pending_delete = max(0, self._pending_delete - size)

    def _discard(self, victims: list[tuple[str, int]]) -> None:
        with self._lock:
            self._rename_to_trash(victims)
        self._schedule_deletes(victims)

    def _forget(self, key: str) -> None:
        """Drop a key whose file is gone, unless a new upload has just published it again."""
        with self._lock:
            self._hot.discard(key)
            self._removals += 1
            if os.path.lexists(self._entry_path(key)):
                return
            removed = self._lru.remove(key) is not None
            self._atime_saved.pop(key, None)
        if removed and self.peers is not None:
            self.peers.removed(key)

    def _adopt(self, key: str) -> None:
        """A published file the index does not know (a race, or copied in by hand): index it."""
        try:
            size = os.stat(self._entry_path(key)).st_size
        except OSError:
            return
        self._index_found(key, size)

    def _index_found(self, key: str, size: int) -> None:
        if self.replica_added(key, size) and self.peers is not None:
            self.peers.added(key, size)

    # ---------------------------------------------------- other workers' changes

    def replica_added(self, key: str, size: int) -> bool:
        """Index a key unless it is known; whether it was new."""
        if not is_valid_key(key):  # `get` trusts every indexed key to be one
            return False
        with self._lock:
            if key in self._lru:
                return False
            self._lru.add(key, size)
            return True

    def replica_removed(self, key: str) -> None:
        with self._lock:
            self._let_go_locked(key)
            self._lru.remove(key)

    def replica_touched(self, keys: list[str]) -> None:
        with self._lock:
            touch = self._lru.touch
            for key in keys:
                touch(key)

    def after_fork(self) -> None:
        """In a freshly forked worker: own lock, own deleter thread, own upload names."""
        self._lock = threading.Lock()
        self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-delete")
        self._pid = os.getpid()

    # ------------------------------------------------------------- quarantine

    def _quarantine_open(self, key: str, fd: int, reason: str) -> None:
        """Move a damaged entry aside, unless the name now points at a newer file."""
        try:
            same = os.fstat(fd).st_ino == os.stat(self._entry_path(key)).st_ino
        except OSError:
            same = False
        finally:
            os.close(fd)
        if same:
            self._move_to_quarantine(self._entry_path(key), key, reason)
            self._forget(key)

    def _move_to_quarantine(self, path: str, key: str, reason: str) -> None:
        self.counters.damaged += 1
        log.warning("damaged cache entry %s (%s): quarantined, served as a miss", key, reason)
        try:
            os.rename(path, os.path.join(self._quarantine_dir, f"{key}.{time.time_ns()}"))
        except OSError as exc:
            _unlink_quietly(path)
            self._record_error("quarantine", f"{key}: {exc.strerror}")
        self._trim_quarantine()

    def _trim_quarantine(self) -> None:
        try:
            with os.scandir(self._quarantine_dir) as it:
                items = sorted(it, key=lambda e: e.name.rsplit(".", 1)[-1])
        except OSError:
            return
        for item in items[:-QUARANTINE_KEEP]:
            _unlink_quietly(item.path)

    # ------------------------------------------------------------------ scrub

    def scrub(self, *, max_bytes_per_s: float | None = None, stop: threading.Event | None = None) -> ScrubReport:
        """Re-read every entry and check size and checksum; damaged ones go to quarantine."""
        with self._lock:
            keys = list(self._lru)
        checked = damaged = bytes_read = 0
        started = time.monotonic()
        for key in keys:
            if stop is not None and stop.is_set():
                break
            try:
                fd = os.open(self._entry_path(key), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # evicted meanwhile
            except OSError as exc:
                self._record_error("scrub", f"open {key}: {exc.strerror}")
                continue
            try:
                header = EntryHeader.unpack(os.pread(fd, HEADER_SIZE, 0))
                check_file_size(header, os.fstat(fd).st_size)
                hasher = new_hasher()
                offset = HEADER_SIZE
                while offset < HEADER_SIZE + header.body_size:
                    chunk = os.pread(fd, min(_SCRUB_CHUNK, HEADER_SIZE + header.body_size - offset), offset)
                    if not chunk:
                        raise DamagedEntry("file shrank while scrubbing")
                    hasher.update(chunk)
                    offset += len(chunk)
                    bytes_read += len(chunk)
                    if max_bytes_per_s:
                        ahead = bytes_read / max_bytes_per_s - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                if hasher.digest() != header.digest:
                    raise DamagedEntry("checksum mismatch")
                os.close(fd)
            except DamagedEntry as exc:
                damaged += 1
                self._quarantine_open(key, fd, str(exc))
            except OSError as exc:
                os.close(fd)
                self._record_error("scrub", f"read {key}: {exc.strerror}")
            checked += 1
        return ScrubReport(checked, damaged, bytes_read)

    # ------------------------------------------------------------------ stats

    def stats(self) -> StorageStats:
        try:
            st = os.statvfs(self.root)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = -1
        with self._lock:
            return StorageStats(
                entries=len(self._lru),
                bytes=self._lru.total,
                max_bytes=self.max_bytes,
                reserved_bytes=self._reserved,
                memory_bytes=self._hot.total,
                free_disk_bytes=free,
                min_free_disk_bytes=self.min_free_bytes,
            )

    def _record_error(self, op: str, message: str) -> None:
        with self._lock:
            self._record_error_locked(op, message)

    def _record_error_locked(self, op: str, message: str) -> None:
        self.counters.errors += 1
        self.counters.last_error = StorageFault(time.time(), op, message)
        log.error("storage error during %s: %s", op, message)

    def flush(self) -> None:
        """Wait for background deletions (tests, shutdown)."""
        self._deleter.submit(lambda: None).result()

    def close(self) -> None:
        self._deleter.shutdown(wait=True)


class _Upload:
    """What both uploads share: the size checks, one finish (stage or abort), the staged commit.

    `_finishing` is taken by whichever of stage/commit and abort comes first; commit may run
    in a worker thread while the event loop calls abort, and only the first may act.
    """

    __slots__ = ()
    _storage: DiskStorage
    key: str
    size: int
    written: int
    owner: str
    arrived: int  # bytes counted in the storage's `_arrived` (the body so far, then the header)
    _finishing: threading.Lock

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
        raise NotImplementedError

    def stage(self) -> Staged:
        raise NotImplementedError

    def publish(self, staged: Staged, error: OSError | None) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        """Stage, sync inline when the storage asks for it, publish."""
        staged = self.stage()
        self.publish(staged, sync_staged([staged])[0] if self._storage.fsync else None)

    def abort(self) -> None:
        if self._finishing.acquire(blocking=False):
            self._discard()


class SmallUpload(_Upload):
    """An upload of at most INLINE_MAX bytes: collected in memory, written whole at commit.

    Nothing touches the disk before `commit`, so an interrupted upload leaves nothing.
    """

    __slots__ = ("_storage", "key", "size", "_chunks", "written", "owner", "arrived", "_finishing")

    def __init__(self, storage: DiskStorage, key: str, size: int, owner: str = "") -> None:
        self._storage = storage
        self.key = key
        self.size = size
        self._chunks: list[bytes] = []
        self.written = 0
        self.owner = owner
        self.arrived = 0
        self._finishing = threading.Lock()

    def _arrive(self, nbytes: int) -> None:
        self._storage._arrive(nbytes)
        self.arrived += nbytes

    def write(self, chunk: bytes) -> None:
        self._check_room(chunk)
        self._chunks.append(chunk)
        self.written += len(chunk)

    def stage(self) -> Staged:
        """First half of a commit, never blocking on a sync: write and link."""
        self._begin_finish()
        storage = self._storage
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        data = finished_header(len(body), digest_of(body)) + body
        try:
            self._arrive(len(data))  # held in memory until now: its bytes evict when they go to disk
        except NotStored:
            storage._release(self.owner, len(data), self.arrived)
            raise
        tmp_path = storage._tmp_path(self.key)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            storage._release(self.owner, len(data), self.arrived)
            storage._record_error("put", f"create upload file: {exc.strerror}")
            raise NotStored(f"not stored: {exc.strerror}") from None
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            _close_quietly(fd)
            _unlink_quietly(tmp_path)
            storage._release(self.owner, len(data), self.arrived)
            storage._record_error("put", f"write {self.key}: {exc.strerror}")
            raise NotStored(f"not stored: {exc.strerror}") from None
        return storage._stage(self.key, fd, tmp_path, len(data), self.owner)

    def publish(self, staged: Staged, error: OSError | None) -> None:
        """After `staged` was synced: index the entry, or withdraw it."""
        self._storage._publish_staged(self.key, staged, self.size + HEADER_SIZE, error, self.owner)

    def _discard(self) -> None:
        self._chunks = []
        self._storage._release(self.owner, self.size + HEADER_SIZE, self.arrived)


class DiskUpload(_Upload):
    """One upload streamed into `tmp/`; see `Upload` in base.py for the contract."""

    __slots__ = ("_storage", "key", "size", "_fd", "_tmp_path", "_hasher", "written", "owner", "arrived",
                 "_finishing")

    def __init__(self, storage: DiskStorage, key: str, size: int, fd: int, tmp_path: str, owner: str = "") -> None:
        self._storage = storage
        self.key = key
        self.size = size
        self._fd = fd
        self._tmp_path = tmp_path
        self._hasher = new_hasher()
        self.written = 0
        self.owner = owner
        self.arrived = 0
        self._finishing = threading.Lock()

    def _arrive(self, nbytes: int) -> None:
        self._storage._arrive(nbytes)
        self.arrived += nbytes

    def write(self, chunk: bytes) -> None:
        self._check_room(chunk)
        try:
            self._arrive(len(chunk))
        except NotStored:
            self.abort()
            raise
        try:
            # The body goes straight to its final offset; the header is written at commit.
            view = memoryview(chunk)
            offset = HEADER_SIZE + self.written
            while view:
                done = os.pwrite(self._fd, view, offset)
                view = view[done:]
                offset += done
        except OSError as exc:
            self.abort()
            self._storage._record_error("put", f"write {self.key}: {exc.strerror}")
            raise NotStored(f"not stored: {exc.strerror}") from None
        self._hasher.update(chunk)
        self.written += len(chunk)

    def stage(self) -> Staged:
        """First half of a commit, never blocking on a sync: header and link."""
        self._begin_finish()
        try:
            self._arrive(HEADER_SIZE)
        except NotStored:
            self._discard()
            raise
        try:
            os.pwrite(self._fd, finished_header(self.size, self._hasher.digest()), 0)
        except OSError as exc:
            self._discard()
            self._storage._record_error("put", f"commit {self.key}: {exc.strerror}")
            raise NotStored(f"not stored: {exc.strerror}") from None
        fd, self._fd = self._fd, -1  # from here on `_stage` and `publish` own it
        return self._storage._stage(self.key, fd, self._tmp_path, self.size + HEADER_SIZE, self.owner)

    def publish(self, staged: Staged, error: OSError | None) -> None:
        self._storage._publish_staged(self.key, staged, self.size + HEADER_SIZE, error, self.owner)

    def _discard(self) -> None:
        """Called exactly once, by whoever took `_finishing`."""
        if self._fd >= 0:
            _close_quietly(self._fd)
            self._fd = -1
        _unlink_quietly(self._tmp_path)
        self._storage._release(self.owner, self.size + HEADER_SIZE, self.arrived)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
