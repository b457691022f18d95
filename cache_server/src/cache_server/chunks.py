"""Whole records into writes of bounded size, for writers that must never split one."""

from __future__ import annotations


def whole_chunks(data: bytes, limit: int, end: bytes = b"\n") -> list[bytes]:
    """Cut `data`, records that each end with `end`, into chunks of at most `limit` bytes,
    only ever right after an `end` (a record longer than `limit` goes alone).

    Works on the joined bytes, so its cost is per chunk, not per record: the access log
    cuts every batch of lines with it."""
    out: list[bytes] = []
    start = 0
    step = len(end)
    while len(data) - start > limit:
        cut = data.rfind(end, start, start + limit)
        if cut < 0:  # the next record alone is longer than `limit`
            cut = data.find(end, start + limit)
            if cut < 0:
                break
        out.append(data[start:cut + step])
        start = cut + step
    if start < len(data):
        out.append(data[start:])
    return out
