"""Cutting joined records into bounded writes: never through a record, nothing lost."""

import random

import pytest

from cache_server.chunks import whole_chunks


@pytest.mark.parametrize("end", [b"\n", b" "])
def test_chunks_rejoin_to_the_input_and_end_on_a_record_boundary(end):
    rng = random.Random(7)
    records = [b"x" * rng.randint(0, 300) + end for _ in range(500)]
    data = b"".join(records)
    for limit in (1, 50, 301, 4096, len(data), len(data) + 1):
        chunks = whole_chunks(data, limit, end)
        assert b"".join(chunks) == data
        starts = {0}
        for record in records:
            starts.add(max(starts) + len(record))
        offset = 0
        for chunk in chunks:
            offset += len(chunk)
            assert offset in starts, f"limit {limit}: a cut inside a record"
            # Over the limit only when the chunk is one record that alone is longer.
            assert len(chunk) <= limit or chunk.count(end) == 1


def test_a_short_input_is_one_chunk_and_an_empty_one_none():
    assert whole_chunks(b"a\nb\n", 100) == [b"a\nb\n"]
    assert whole_chunks(b"", 100) == []


def test_a_record_longer_than_the_limit_goes_alone():
    assert whole_chunks(b"ab\n" + b"c" * 10 + b"\nd\n", 5) == [b"ab\n", b"c" * 10 + b"\n", b"d\n"]
