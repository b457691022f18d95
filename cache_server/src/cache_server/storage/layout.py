"""The storage directory at start: its subdirectories made and probed, crash leftovers swept,
published entries found (see disk.py for what each directory holds)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable

from .base import is_valid_key
from .entry_format import HEADER_SIZE

log = logging.getLogger("cache_server.storage")


class StorageSetupError(Exception):
    """The storage directory cannot be used (message names the path and the fix)."""


def prepare(root: str, directories: list[str], scratch: str) -> None:
    """Make `root` and `directories`, and check a file can be written in `scratch`."""
    existed = os.path.isdir(root)
    for path in (root, *directories):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageSetupError(
                f"storage directory {path} cannot be created: {exc.strerror}; "
                "pass --storage DIR with a directory this user can write"
            ) from None
    probe = os.path.join(scratch, f".probe-{secrets.token_hex(4)}")
    try:
        with open(probe, "wb") as fh:
            fh.write(b"probe")
        os.unlink(probe)
    except OSError as exc:
        raise StorageSetupError(
            f"storage directory {root} is not writable: {exc.strerror}; "
            "fix its owner or permissions, or pass --storage DIR"
        ) from None
    if not existed:  # a mistyped --storage must not go unnoticed
        log.info("created the storage directory %s (it did not exist)", root)


def sweep(directories: list[str]) -> int:
    """Remove uploads and deletions that a crash or kill -9 left behind; how many."""
    swept = 0
    for directory in directories:
        with os.scandir(directory) as it:
            for item in it:
                try:
                    os.unlink(item.path)
                    swept += 1
                except OSError as exc:
                    log.warning("cannot remove leftover %s: %s", item.path, exc.strerror)
    if swept:
        log.info("removed %d incomplete upload(s) or pending deletion(s) left by a previous run", swept)
    return swept


def scan_entries(entries_dir: str, too_short: Callable[[str, str], None]) -> list[tuple[str, int]]:
    """Every published entry as (key, file size), least recently used first (by access time, so
    that eviction order survives a restart). A file shorter than a header goes to `too_short`."""
    found: list[tuple[int, str, int]] = []
    with os.scandir(entries_dir) as shards:
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            with os.scandir(shard.path) as files:
                for item in files:
                    if not is_valid_key(item.name) or item.name[:2] != shard.name:
                        continue
                    st = item.stat(follow_symlinks=False)
                    if st.st_size < HEADER_SIZE:
                        too_short(item.path, item.name)
                        continue
                    found.append((max(st.st_atime_ns, st.st_mtime_ns), item.name, st.st_size))
    found.sort()
    return [(key, size) for _, key, size in found]
