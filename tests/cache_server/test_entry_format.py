import pytest

from cache_server.storage.entry_format import (
    HEADER_SIZE,
    DamagedEntry,
    EntryHeader,
    check_digest,
    check_file_size,
    finished_header,
    new_hasher,
)


def _header(body: bytes) -> EntryHeader:
    hasher = new_hasher()
    hasher.update(body)
    return EntryHeader.unpack(finished_header(len(body), hasher.digest()))


def test_header_round_trips_and_is_fixed_size():
    hasher = new_hasher()
    hasher.update(b"payload")
    raw = finished_header(7, hasher.digest())
    assert len(raw) == HEADER_SIZE
    header = EntryHeader.unpack(raw)
    assert header.body_size == 7 and header.digest == hasher.digest()
    assert header.pack() == raw


@pytest.mark.parametrize("raw", [b"", b"NXFC", b"XXXX" + b"\0" * 60, b"\0" * HEADER_SIZE])
def test_garbage_headers_are_damaged(raw):
    with pytest.raises(DamagedEntry):
        EntryHeader.unpack(raw)


def test_size_and_digest_checks_catch_truncation_and_bit_flips():
    body = b"x" * 1000
    header = _header(body)
    check_file_size(header, HEADER_SIZE + 1000)
    check_digest(header, body)
    with pytest.raises(DamagedEntry, match="header says"):
        check_file_size(header, HEADER_SIZE + 999)
    with pytest.raises(DamagedEntry, match="checksum"):
        check_digest(header, b"x" * 999 + b"y")


def test_a_body_hashed_whole_and_streamed_in_pieces_has_one_digest():
    # Small uploads are hashed whole, large ones as they stream, and the scrubber streams every entry.
    from cache_server.storage.entry_format import digest_of

    body = bytes(range(256)) * 300
    hasher = new_hasher()
    for start in range(0, len(body), 1000):
        hasher.update(body[start:start + 1000])
    assert digest_of(body) == hasher.digest()
    assert digest_of(body) != digest_of(body[:-1])
