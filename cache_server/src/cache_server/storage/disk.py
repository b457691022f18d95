"""Filesystem backend: the default store and the index every other backend sits behind.

Layout under the storage root (one filesystem, so `link` and `rename` are atomic):

    entries/<key[:2]>/<key>   published entries (header + body, see entry_format)
    tmp/                      uploads in progress; swept at start (crash leftovers)
    trash/                    evicted entries waiting to be unlinked in the background
    quarantine/               damaged entries, kept for inspection (newest few only, scrub.py)

Uploads (uploads.py) stream into `tmp/`, get their header and optional fsync, then are
published with `link()`, which fails if the name exists: first writer wins and a
racing second upload gets `EntryExists` (409). Readers never see a partial file.

The lock guards the in-memory index and the room accounting (room.py) only; file I/O runs
outside it, apart from the metadata-only renames that must be ordered with index changes.
Several server processes sharing the directory use `SharedDiskStorage` (replication/storage.py).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import threading
import time

from .base import Blob, Staged, StorageCounters, StorageFault, StorageStats, is_valid_key, require_key
from .entry_format import HEADER_SIZE, DamagedEntry, EntryHeader, check_digest, check_file_size
from .errors import ArtifactTooLarge, EntryExists, NotStored
from .hot import HotBodies
from .lru import SizedLRU
from .room import STATVFS_MAX_AGE_S, NoSpace, Room
from . import layout
from .layout import StorageSetupError
from .scrub import Quarantine, ScrubReport, scrub
from .syncer import BatchSyncer
from .trash import Trash
from .uploads import DiskUpload, SmallUpload, close_quietly, unlink_quietly

log = logging.getLogger("cache_server.storage")

INLINE_MAX = 64 * 1024  # bodies up to this size are read whole and digest-checked on every GET
ATIME_PERSIST_INTERVAL_S = 3600.0  # LRU order survives restarts at this granularity
# When the filesystem says it is full (ENOSPC, EDQUOT) although the room accounting did not
# expect it (another writer, a stale statvfs), this share of the entries goes at once (at least
# _ENOSPC_EVICT_MIN), so that the uploads after it fit.
_ENOSPC_EVICT_SHARE = 100
_ENOSPC_EVICT_MIN = 16
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)

__all__ = ["DiskStorage", "INLINE_MAX", "ScrubReport", "StorageSetupError", "is_valid_key"]


class DiskStorage:
    """Size-capped LRU cache on a local filesystem. See module docstring."""
    remote = False  # read with `get` on the loop (an attribute, so the handler's check is one lookup)

    def __init__(self, root: str, *, max_bytes: int, max_artifact_bytes: int, min_free_bytes: int | None = None,
                 fsync: bool = True, memory_cache_bytes: int = 0, statvfs_max_age: float = STATVFS_MAX_AGE_S,
                 max_in_flight_per_owner: int | None = None, max_entries: int = 0,
                 min_free_files: int | None = None) -> None:
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        self.max_artifact_bytes = max_artifact_bytes
        self.fsync = fsync
        self.counters = StorageCounters()
        self._entries_dir = os.path.join(self.root, "entries")
        self._tmp_dir = os.path.join(self.root, "tmp")
        self._quarantine = Quarantine(os.path.join(self.root, "quarantine"), self.counters, self.record_error)
        trash_dir = os.path.join(self.root, "trash")
        layout.prepare(self.root, [self._entries_dir, self._tmp_dir, trash_dir, self._quarantine.directory], self._tmp_dir)
        self._lock = threading.Lock()
        self._lru = SizedLRU()
        self._hot = HotBodies(memory_cache_bytes)
        self._removals = 0  # bumped whenever a key leaves the index, so a slow read cannot refill a stale body
        self._atime_saved: dict[str, float] = {}
        self._shards: set[str] = set()  # shard directories known to exist
        # Upload file names: unique without a getrandom() call per upload (tmp/ is swept at start).
        self._tmp_names = itertools.count()
        self._pid = os.getpid()
        # With fsync, uploads a server finishes are synced in batches (sync_in_batches); without
        # a batcher, `Upload.finish` syncs inline.
        self.syncer: BatchSyncer | None = None
        # A head promises bytes; only bytes that arrive evict. One token's promises are capped so
        # that heads without bodies cannot hold the cache's room for long.
        self.room = Room(self.root, max_bytes=max_bytes, max_entries=max_entries, min_free_bytes=min_free_bytes,
                         min_free_files=min_free_files, statvfs_max_age=statvfs_max_age,
                         max_in_flight_per_owner=(max(max_bytes // 4, max_artifact_bytes + HEADER_SIZE)
                                                  if max_in_flight_per_owner is None else max_in_flight_per_owner))
        self._trash = Trash(trash_dir, self.room, self._lock, self.record_error)
        self.counters.swept_at_start = layout.sweep([self._tmp_dir, trash_dir])
        self._load_index()

    @property
    def min_free_bytes(self) -> int:
        return self.room.min_free_bytes

    @min_free_bytes.setter
    def min_free_bytes(self, value: int) -> None:
        self.room.min_free_bytes = value

    @property
    def max_in_flight_per_owner(self) -> int:
        return self.room.max_in_flight_per_owner

    def _load_index(self) -> None:
        """Rebuild the LRU from disk, in the order of last use, then evict down to the caps."""
        too_short = lambda path, key: self._quarantine.move(path, key, "shorter than a header")  # noqa: E731
        for key, size in layout.scan_entries(self._entries_dir, too_short):
            self._lru.add(key, self.room.charge(size))
        victims = self._lru.evict_until(self.max_bytes)
        if self.room.max_entries and len(self._lru) > self.room.max_entries:
            victims += self._lru.evict_oldest(len(self._lru) - self.room.max_entries)
        self._discard(victims)
        log.info("cache index: %d entries, %d bytes", len(self._lru), self._lru.total)

    # ------------------------------------------------------------------ paths

    # Paths by f-string, not os.path.join: these run several times per request, and the
    # directories are absolute and keys are letters and digits.
    def entry_path(self, key: str) -> str:
        return f"{self._entries_dir}/{key[:2]}/{key}"

    def _shard_directory(self, key: str) -> str:
        """The entry's directory (as in `entry_path`), created on first use: a set lookup afterwards, not a syscall."""
        shard = key[:2]
        directory = f"{self._entries_dir}/{shard}"
        if shard not in self._shards:
            os.makedirs(directory, exist_ok=True)
            self._shards.add(shard)
        return directory

    # ------------------------------------------------------------------- read

    def contains(self, key: str) -> bool:
        return key in self._lru

    def keys(self) -> list[str]:
        """Every indexed key, least recently used first."""
        with self._lock:
            return list(self._lru)

    def get(self, key: str) -> Blob | None:
        with self._lock:
            if not self._lru.touch(key):
                require_key(key)
                return None
            # Only valid keys enter the index: no need to check this one again.
            body = self._hot.get(key)
            # Once per ATIME_PERSIST_INTERVAL_S a hit goes to disk anyway: it re-verifies the
            # file and persists the access time that orders eviction after a restart.
            if body is not None and time.monotonic() - self._atime_saved.get(key, -ATIME_PERSIST_INTERVAL_S) < ATIME_PERSIST_INTERVAL_S:
                self.counters.memory_hits += 1
                return Blob(len(body), inline=body)
            removals = self._removals
        return self._read(key, True, removals)

    def _read(self, key: str, known: bool, removals: int) -> Blob | None:
        """The entry's file: verified when small, else open for sendfile; indexed if not `known`."""
        try:
            fd = os.open(self.entry_path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if known:
                self._forget(key)
            return None
        except OSError as exc:
            self.record_error("get", f"open {key}: {exc.strerror}")
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
            self.quarantine_open(key, fd, str(exc))
            return None
        except OSError as exc:
            os.close(fd)
            self.record_error("get", f"read {key}: {exc.strerror}")
            return None
        if not known:
            self._index_found(key, self.room.charge(st.st_size))
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
        Nothing is evicted and no file is made here: only bytes that arrive evict (`arrive`).
        `exact` matters to SharedDiskStorage only."""
        require_key(key)
        if size < 0:
            raise ValueError("negative size")
        if size > self.max_artifact_bytes:
            raise ArtifactTooLarge(
                f"artifact of {size} bytes is over the {self.max_artifact_bytes}-byte limit (--max-artifact-size)"
            )
        charge = self.room.charge(size + HEADER_SIZE)
        with self._lock:
            if key in self._lru:
                raise EntryExists(f"{key} is already stored")
            try:
                self.room.admit(owner, charge, self._lru.total)
            except NoSpace as exc:
                self._record_error_locked("put", exc.message)
                raise
        if size <= INLINE_MAX:
            return SmallUpload(self, key, size, charge, owner)
        return DiskUpload(self, key, size, charge, owner)

    def new_upload_file(self, key: str) -> tuple[int, str]:
        """An upload's file in `tmp/`, once an inode may be taken (evicting for one if the count
        or the filesystem's free inodes ask for it); its descriptor and path."""
        room = self.room
        with self._lock:
            short = room.files_short(len(self._lru))
            room.files_in_flight += 1
            if short:
                victims = self._lru.evict_oldest(short)
                if len(victims) < short:
                    room.files_in_flight -= 1
                    self._lru.restore_oldest(victims)
                    message = "not stored: no file can be created (--max-entries, or the disk's free inodes)"
                    self._record_error_locked("put", message)
                    raise NoSpace(message)
                moved = self._rename_to_trash(victims)
        if short:
            # Unlinked here, not in the background: an inode is only free once its file is gone.
            self._trash.unlink(moved)
        path = f"{self._tmp_dir}/{key}.{self._pid}.{next(self._tmp_names)}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), path
        except OSError as exc:
            with self._lock:
                self.room.files_in_flight -= 1
            self.write_failed(f"create upload file for {key}", exc)
            raise NotStored(f"not stored: {exc.strerror}") from None

    def arrive(self, nbytes: int) -> None:
        """`nbytes` of an upload arrived: evict least recently used entries until the index and
        what has arrived fit the cap, and the disk keeps its headroom; or refuse the bytes."""
        room = self.room
        with self._lock:
            room.arrived += nbytes
            limit = self.max_bytes - room.arrived  # what the index may hold besides
            # The common chunk evicts nothing: no lists or calls for it then.
            victims = self._lru.evict_until(limit) if self._lru.total > limit else []
            freed = sum(size for _, size in victims) if victims else 0
            try:
                deficit = room.bytes_short(freed)
            except NoSpace as exc:
                self._lru.restore_oldest(victims)
                room.arrived -= nbytes
                self._record_error_locked("put", exc.message)
                raise
            if deficit > 0:
                if deficit > self._lru.total:
                    self._lru.restore_oldest(victims)  # refusing: nothing is evicted for nothing
                    room.arrived -= nbytes
                    message = (f"not stored: No space left on device for this upload (the disk keeps "
                               f"{room.min_free_bytes} bytes free, --min-free-disk; nothing left to evict)")
                    room.look_again()
                    self._record_error_locked("put", message)
                    raise NoSpace(message)
                victims += self._lru.evict_until(self._lru.total - deficit)
            if victims:
                self._rename_to_trash(victims)
        if victims:
            self._trash.empty_soon()

    # Every commit is staged: the name is linked first and the entry indexed only after the
    # file and its directory are synced (fsync mode; the server syncs in batches, see
    # `BatchSyncer`, `commit` inline). A crash in between
    # leaves a file the index adopts at start; if it was cut short, its size or checksum
    # check turns it into a miss.

    def stage_file(self, key: str, fd: int, tmp_path: str, charge: int, owner: str, arrived: int) -> Staged:
        """Link a fully written (fully arrived) upload under its name; the file and directory to sync."""
        try:
            directory = self._shard_directory(key)
            os.link(tmp_path, f"{directory}/{key}")
        except FileExistsError:
            close_quietly(fd)
            unlink_quietly(tmp_path)
            self.release(owner, charge, arrived, 1)
            self._adopt(key)
            raise EntryExists(f"{key} was stored by a concurrent upload") from None
        except OSError as exc:
            close_quietly(fd)
            unlink_quietly(tmp_path)
            self.release(owner, charge, arrived, 1)
            self._shards.discard(key[:2])
            self.write_failed(f"commit {key}", exc)
            raise NotStored(f"not stored: {exc.strerror}") from None
        unlink_quietly(tmp_path)
        return Staged(fd, directory)

    def publish_file(self, key: str, staged: Staged, charge: int, error: OSError | None, owner: str,
                     arrived: int) -> None:
        close_quietly(staged.fd)
        if error is not None:
            unlink_quietly(self.entry_path(key))
            self.release(owner, charge, arrived, 1)
            self.write_failed(f"fsync {key}", error)
            raise NotStored(f"not stored: {error.strerror}")
        with self._lock:
            self.room.settle(owner, charge, arrived, 1)
            # Not into memory: a body comes in when it is first read (see `get`). Most uploads of
            # an Nx cache are never read, and each one let in would push out a body that is.
            self._lru.add(key, charge)
        self._added(key, charge)

    def release(self, owner: str, charge: int, arrived: int, files: int) -> None:
        with self._lock:
            self.room.settle(owner, charge, arrived, files)

    def write_failed(self, what: str, exc: OSError) -> None:
        """A write, create or link failed: recorded; when the filesystem is full against the
        room accounting's expectation, a share of the oldest entries goes, so the next upload fits."""
        with self._lock:
            self._record_error_locked("put", f"{what}: {exc.strerror}")
            if exc.errno not in _OUT_OF_SPACE:
                return
            self.room.look_again()
            victims = self._lru.evict_oldest(max(_ENOSPC_EVICT_MIN, len(self._lru) // _ENOSPC_EVICT_SHARE))
            moved = self._rename_to_trash(victims)
        self._trash.unlink(moved)

    # --------------------------------------------------------------- eviction

    def _rename_to_trash(self, victims: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Under the lock: evicted keys out of the index and their files into the trash; the
        files moved, with their sizes."""
        moved = []
        for key, size in victims:
            self._let_go_locked(key)
            self._removed(key)
            try:
                trash = self._trash.move_locked(key, self.entry_path(key), size)
            except OSError as exc:
                self._record_error_locked("evict", f"{key}: {exc.strerror}")
                continue
            if trash is None:
                continue  # gone already: another worker evicted it first, or it was removed by hand
            self.counters.evictions += 1
            self.counters.evicted_bytes += size
            moved.append((trash, size))
        return moved

    def _let_go_locked(self, key: str) -> None:
        """A key leaves the index: drop its memory copy and atime mark, and make sure a read in
        flight cannot put the body back (`_removals`)."""
        self._hot.discard(key)
        self._removals += 1
        self._atime_saved.pop(key, None)

    def remove(self, key: str) -> None:
        """Drop one entry now (readers holding it open keep reading it)."""
        with self._lock:
            size = self._lru.remove(key)
            if size is not None:
                self._rename_to_trash([(key, size)])
        self._trash.empty_soon()

    def _discard(self, victims: list[tuple[str, int]]) -> None:
        with self._lock:
            self._rename_to_trash(victims)
        if victims:
            self._trash.empty_soon()

    def _forget(self, key: str) -> None:
        """Drop a key whose file is gone, unless a new upload has just published it again."""
        with self._lock:
            self._hot.discard(key)
            self._removals += 1
            if os.path.lexists(self.entry_path(key)):
                return
            removed = self._lru.remove(key) is not None
            self._atime_saved.pop(key, None)
        if removed:
            self._removed(key)

    def _adopt(self, key: str) -> None:
        """A published file the index does not know (a race, or copied in by hand): index it."""
        try:
            size = os.stat(self.entry_path(key)).st_size
        except OSError:
            return
        self._index_found(key, self.room.charge(size))

    def _index_found(self, key: str, size: int) -> None:
        if self._index_new(key, size):
            self._added(key, size)

    def _index_new(self, key: str, size: int) -> bool:
        """Index a key unless it is known; whether it was new."""
        if not is_valid_key(key):  # `get` trusts every indexed key to be one
            return False
        with self._lock:
            if key in self._lru:
                return False
            self._lru.add(key, size)
            return True

    # What other processes sharing the directory must learn (SharedDiskStorage); alone, nobody.
    def _added(self, key: str, size: int) -> None:
        pass

    def _removed(self, key: str) -> None:
        pass

    # ------------------------------------------------------- damaged entries

    def quarantine_open(self, key: str, fd: int, reason: str) -> None:
        """Move a damaged entry aside, unless the name now points at a newer file."""
        try:
            same = os.fstat(fd).st_ino == os.stat(self.entry_path(key)).st_ino
        except OSError:
            same = False
        finally:
            os.close(fd)
        if same:
            self._quarantine.move(self.entry_path(key), key, reason)
            self._forget(key)

    def scrub(self, *, max_bytes_per_s: float | None = None, stop: threading.Event | None = None) -> ScrubReport:
        return scrub(self, max_bytes_per_s=max_bytes_per_s, stop=stop)

    # ------------------------------------------------------------------ stats

    def stats(self) -> StorageStats:
        try:
            st = os.statvfs(self.root)
            free, free_files = st.f_bavail * st.f_frsize, (st.f_favail if st.f_files else -1)
        except OSError:
            free = free_files = -1
        with self._lock:
            return StorageStats(
                entries=len(self._lru),
                bytes=self._lru.total,
                max_bytes=self.max_bytes,
                reserved_bytes=self.room.reserved,
                memory_bytes=self._hot.total,
                free_disk_bytes=free,
                min_free_disk_bytes=self.room.min_free_bytes,
                free_disk_files=free_files,
                min_free_disk_files=self.room.min_free_files,
                max_entries=self.room.max_entries,
            )

    def record_error(self, op: str, message: str) -> None:
        with self._lock:
            self._record_error_locked(op, message)

    def _record_error_locked(self, op: str, message: str) -> None:
        self.counters.errors += 1
        self.counters.last_error = StorageFault(time.time(), op, message)
        log.error("storage error during %s: %s", op, message)

    def sync_in_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the server's event loop: fsync finished uploads in batches, off the loop."""
        if self.fsync:
            self.syncer = BatchSyncer(loop)

    def stop_syncing(self) -> None:
        """Sync what was handed over, then stop the batcher (blocks: call off the loop)."""
        syncer, self.syncer = self.syncer, None
        if syncer is not None:
            syncer.close()

    def flush(self) -> None:
        """Wait for background deletions (tests, shutdown)."""
        self._trash.flush()

    def close(self) -> None:
        self._trash.close()
