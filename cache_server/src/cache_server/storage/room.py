"""What the cache may still take, in bytes and in files, and what uploads in flight hold of it.

Bookkeeping plus one statvfs; the storage calls every method under its own lock and decides
what to evict. Two limits run out on a cache host: bytes, and inodes. A filesystem of many
small entries runs out of inodes first (every 1-byte entry also takes a whole block and an
inode), so an entry is charged at least one block, free files (`f_favail`) are watched like
free bytes, and `--max-entries` caps the count outright.
"""

from __future__ import annotations

import math
import os
import time

from .errors import NotStored

STATVFS_MAX_AGE_S = 0.1  # free space is re-read at most this often; uploads in flight are reserved meanwhile


class NoSpace(NotStored):
    """Refused for the filesystem's sake (its headroom, or statvfs failing): a storage error."""


class Room:
    def __init__(self, root: str, *, max_bytes: int, max_entries: int, min_free_bytes: int | None,
                 min_free_files: int | None, max_in_flight_per_owner: int, statvfs_max_age: float) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_entries = max_entries  # 0: no cap but the filesystem's
        st = os.statvfs(root)
        self.block = st.f_frsize or 4096
        # Keep 5% of the filesystem free, but never demand more than 2 GiB; and 1% of its inodes,
        # at most 10,000 (a filesystem that reports no inode limit, btrfs, has f_files 0).
        self.min_free_bytes = min(2 << 30, st.f_blocks * st.f_frsize // 20) if min_free_bytes is None else min_free_bytes
        self.min_free_files = min(10_000, st.f_files // 100) if min_free_files is None else min_free_files
        self.files_limited = st.f_files > 0
        self.max_in_flight_per_owner = max_in_flight_per_owner
        self.reserved = 0  # promised by uploads in flight (their charge)
        self.arrived = 0  # of that, what has arrived: eviction makes room for these bytes only
        self.reserved_by: dict[str, int] = {}  # per token: one token cannot promise the whole cache
        self.files_in_flight = 0  # upload files created and not yet published or removed
        self.pending_delete = 0  # bytes of evicted entries waiting to be unlinked
        self.pending_delete_files = 0
        self._statvfs_max_age = statvfs_max_age
        self._statvfs_at = -math.inf
        self._free_bytes = 0
        self._free_files = 0

    def charge(self, file_size: int) -> int:
        """What an entry of `file_size` bytes costs the cache: at least one block."""
        return file_size if file_size > self.block else self.block

    # ---------------------------------------------------------------- statvfs

    def _statvfs(self) -> None:
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise NoSpace(f"not stored: statvfs: {exc.strerror}") from None
        self._free_bytes = st.f_bavail * st.f_frsize
        self._free_files = st.f_favail
        self._statvfs_at = time.monotonic()

    def look_again(self) -> None:
        """The next question reads the filesystem again (after a refusal or an ENOSPC)."""
        self._statvfs_at = -math.inf

    def free_bytes(self) -> int:
        """Free bytes on the filesystem, plus what evicted entries waiting for deletion give back."""
        if time.monotonic() - self._statvfs_at >= self._statvfs_max_age:
            self._statvfs()
        return self._free_bytes + self.pending_delete

    def files_short(self, index_entries: int) -> int:
        """How many entries must go before one more file may be created (0: none). From the
        statvfs its upload's admission read a moment ago."""
        short = index_entries + self.files_in_flight + 1 - self.max_entries if self.max_entries else 0
        if self.files_limited:
            # Counted as if none of the files in flight were in the last statvfs yet.
            # Two per new file: tmpfs charges a hard link an inode too, and publishing links the file.
            lacking = self.min_free_files + 2 - (self._free_files + self.pending_delete_files - self.files_in_flight)
            if lacking > short:
                return lacking
        return short if short > 0 else 0

    # ---------------------------------------------------------------- uploads

    def admit(self, owner: str, charge: int, index_bytes: int) -> None:
        """Promise `charge` bytes to an upload of `owner`, or refuse it (NotStored)."""
        if self.max_bytes - self.reserved - charge < 0:
            raise NotStored(f"not stored: {charge} bytes do not fit the cache's {self.max_bytes}-byte cap")
        held = self.reserved_by.get(owner, 0)
        if held + charge > self.max_in_flight_per_owner:
            raise NotStored(f"not stored: {owner or 'this token'} has {held} bytes of uploads in flight; "
                            f"{charge} more would pass its cap of {self.max_in_flight_per_owner}")
        free = self.free_bytes() - (self.reserved - self.arrived)
        if self.min_free_bytes + charge - free > index_bytes:  # not even with the cache emptied
            self.look_again()
            raise NoSpace(f"not stored: disk has {max(free, 0)} bytes free and keeps {self.min_free_bytes} "
                            f"free (--min-free-disk); upload needs {charge}")
        self.reserved += charge
        self.reserved_by[owner] = held + charge

    def bytes_short(self, freed: int) -> int:
        """Bytes the disk lacks for its headroom after what has arrived, once `freed` is evicted;
        counted as if none of the arrived bytes were in the last statvfs yet."""
        return self.min_free_bytes - (self.free_bytes() - self.arrived + freed)

    def settle(self, owner: str, charge: int, arrived: int, files: int) -> None:
        """An upload is published or dropped: its promise, its arrived bytes and its file (if it
        made one) are let go."""
        self.files_in_flight -= files
        self.reserved -= charge
        self.arrived -= arrived
        held = self.reserved_by.get(owner, 0) - charge
        if held > 0:
            self.reserved_by[owner] = held
        else:
            self.reserved_by.pop(owner, None)
