"""On-disk layout of one cache entry: a 64-byte header, then the artifact bytes.

The header records the body size and an XXH3-128 digest taken while the body
streamed in, so a truncated or damaged file is detected before it is served
(size on every GET, digest on small GETs and by the scrubber).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import xxhash

MAGIC = b"NXFC"
VERSION = 1
ALGO_XXH3_128 = 1
HEADER_SIZE = 64
# magic, version, algorithm, reserved, body size, digest, created (ns since epoch)
_LAYOUT = struct.Struct("<4sBBHQ16sQ")
_PADDING = b"\0" * (HEADER_SIZE - _LAYOUT.size)


class DamagedEntry(ValueError):
    """The bytes on disk are not a complete, intact entry."""


@dataclass(frozen=True, slots=True)
class EntryHeader:
    body_size: int
    digest: bytes
    created_ns: int

    def pack(self) -> bytes:
        return _pack(self.body_size, self.digest, self.created_ns)

    @classmethod
    def unpack(cls, raw: bytes) -> EntryHeader:
        if len(raw) < HEADER_SIZE:
            raise DamagedEntry(f"header is {len(raw)} bytes, expected {HEADER_SIZE}")
        magic, version, algo, _, size, digest, created = _LAYOUT.unpack_from(raw)
        if magic != MAGIC or version != VERSION or algo != ALGO_XXH3_128:
            raise DamagedEntry("bad header magic or version")
        return cls(size, digest, created)


def new_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


def _pack(body_size: int, digest: bytes, created_ns: int) -> bytes:
    return _LAYOUT.pack(MAGIC, VERSION, ALGO_XXH3_128, 0, body_size, digest, created_ns) + _PADDING


def digest_of(body: bytes) -> bytes:
    """The digest of a whole body at once (what `new_hasher` gives for one streamed in)."""
    return xxhash.xxh3_128_digest(body)


def finished_header(body_size: int, digest: bytes) -> bytes:
    """The packed header of a body with this digest, stamped now (every upload; no EntryHeader made)."""
    return _pack(body_size, digest, time.time_ns())


def check_file_size(header: EntryHeader, file_size: int) -> None:
    if file_size != HEADER_SIZE + header.body_size:
        raise DamagedEntry(
            f"file is {file_size} bytes, header says {HEADER_SIZE + header.body_size}"
        )


def check_digest(header: EntryHeader, body: bytes) -> None:
    if digest_of(body) != header.digest:
        raise DamagedEntry("checksum mismatch")
