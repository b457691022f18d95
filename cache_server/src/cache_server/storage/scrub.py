"""Damaged entries: kept aside in `quarantine/` for inspection, and found by a scrub.

A damaged entry (cut short, checksum wrong) is moved aside and then reads as a miss; only
the newest QUARANTINE_KEEP are kept. The scrub re-reads every entry at a bounded rate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import StorageCounters
from .entry_format import HEADER_SIZE, DamagedEntry, EntryHeader, check_file_size, new_hasher

if TYPE_CHECKING:
    from .disk import DiskStorage

log = logging.getLogger("cache_server.storage")

QUARANTINE_KEEP = 64
_SCRUB_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ScrubReport:
    checked: int
    damaged: int
    bytes_read: int


class Quarantine:
    def __init__(self, directory: str, counters: StorageCounters, record_error: Callable[[str, str], None]) -> None:
        self.directory = directory
        self._counters = counters
        self._record_error = record_error

    def move(self, path: str, key: str, reason: str) -> None:
        self._counters.damaged += 1
        log.warning("damaged cache entry %s (%s): quarantined, served as a miss", key, reason)
        try:
            os.rename(path, os.path.join(self.directory, f"{key}.{time.time_ns()}"))
        except OSError as exc:
            try:
                os.unlink(path)
            except OSError:
                pass
            self._record_error("quarantine", f"{key}: {exc.strerror}")
        self._trim()

    def _trim(self) -> None:
        try:
            with os.scandir(self.directory) as it:
                items = sorted(it, key=lambda e: e.name.rsplit(".", 1)[-1])
        except OSError:
            return
        for item in items[:-QUARANTINE_KEEP]:
            try:
                os.unlink(item.path)
            except OSError:
                pass


def scrub(storage: DiskStorage, *, max_bytes_per_s: float | None = None,
          stop: threading.Event | None = None) -> ScrubReport:
    """Re-read every entry and check size and checksum; damaged ones go to quarantine."""
    checked = damaged = bytes_read = 0
    started = time.monotonic()
    for key in storage.keys():
        if stop is not None and stop.is_set():
            break
        try:
            fd = os.open(storage.entry_path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # evicted meanwhile
        except OSError as exc:
            storage.record_error("scrub", f"open {key}: {exc.strerror}")
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
            storage.quarantine_open(key, fd, str(exc))
        except OSError as exc:
            os.close(fd)
            storage.record_error("scrub", f"read {key}: {exc.strerror}")
        checked += 1
    return ScrubReport(checked, damaged, bytes_read)
