"""Whole records into writes of bounded size, for writers that must never split one."""

from __future__ import annotations


def whole_chunks(records: list[bytes], limit: int) -> list[bytes]:
    """Concatenate records into chunks of at most `limit` bytes, never splitting a record
    (one longer than `limit` goes alone)."""
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for record in records:
        if chunk and size + len(record) > limit:
            out.append(b"".join(chunk))
            chunk, size = [], 0
        chunk.append(record)
        size += len(record)
    if chunk:
        out.append(b"".join(chunk))
    return out
