"""DiskStorage on a real filesystem (tmp_path): atomicity, LRU, headroom, damage, scrub."""

import os
import threading

import pytest

from cache_server.replication.storage import SharedDiskStorage
from cache_server.storage.disk import DiskStorage
from cache_server.storage.entry_format import HEADER_SIZE
from cache_server.storage.errors import ArtifactTooLarge, EntryExists, IncompleteUpload, NotStored
from cache_server.storage.syncer import sync_staged

MiB = 1 << 20


def make(tmp_path, kind=DiskStorage, **kw):
    kw.setdefault("max_bytes", 100 * MiB)
    kw.setdefault("max_artifact_bytes", 50 * MiB)
    kw.setdefault("min_free_bytes", 0)
    kw.setdefault("fsync", False)
    kw.setdefault("statvfs_max_age", 0)
    return kind(str(tmp_path / "store"), **kw)


def put(storage, key, body):
    upload = storage.begin_put(key, len(body))
    for i in range(0, len(body), 7000):
        upload.write(body[i : i + 7000])
    upload.commit()


def read(storage, key):
    blob = storage.get(key)
    if blob is None:
        return None
    try:
        if blob.inline is not None:
            return blob.inline
        return os.pread(blob.fd, blob.size, blob.offset)
    finally:
        blob.close()


def entry_path(storage, key):
    return os.path.join(storage.root, "entries", key[:2], key)


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 64 * 1024 + 1, 3 * MiB])
def test_round_trip_inline_and_fd(tmp_path, size):
    storage = make(tmp_path)
    body = os.urandom(size)
    put(storage, "123", body)
    blob = storage.get("123")
    assert (blob.inline is None) == (size > 64 * 1024)
    blob.close()
    assert read(storage, "123") == body
    assert storage.stats().bytes == max(size + HEADER_SIZE, storage.room.block)  # at least a block each


def test_entries_are_immutable(tmp_path):
    storage = make(tmp_path)
    put(storage, "1", b"first")
    with pytest.raises(EntryExists):
        storage.begin_put("1", 6)
    assert read(storage, "1") == b"first"


def test_concurrent_uploads_of_one_key_publish_exactly_one_whole_body(tmp_path):
    storage = make(tmp_path)
    a, b = storage.begin_put("77", 4 * MiB), storage.begin_put("77", 4 * MiB)
    body_a, body_b = b"a" * (4 * MiB), b"b" * (4 * MiB)
    for i in range(0, 4 * MiB, MiB):  # interleaved writes
        a.write(body_a[i : i + MiB])
        b.write(body_b[i : i + MiB])
    b.commit()
    with pytest.raises(EntryExists):
        a.commit()
    assert read(storage, "77") == body_b
    assert os.listdir(os.path.join(storage.root, "tmp")) == []
    assert storage.stats().reserved_bytes == 0


def test_aborted_or_short_upload_leaves_nothing(tmp_path):
    storage = make(tmp_path)
    upload = storage.begin_put("5", 100)
    upload.write(b"x" * 60)
    upload.abort()
    upload = storage.begin_put("6", 100)
    upload.write(b"x" * 60)
    with pytest.raises(IncompleteUpload):
        upload.commit()
    upload = storage.begin_put("7", 10)
    with pytest.raises(IncompleteUpload):
        upload.write(b"x" * 11)
    assert storage.get("5") is None and storage.get("6") is None and storage.get("7") is None
    assert os.listdir(os.path.join(storage.root, "tmp")) == []
    assert storage.stats().reserved_bytes == 0


def test_leftovers_of_a_crash_are_swept_at_start(tmp_path):
    storage = make(tmp_path)
    put(storage, "11", b"kept")
    upload = storage.begin_put("12", MiB)  # large: streamed into tmp/
    upload.write(b"y" * 500)  # the process "dies" here: no abort, no commit
    small = storage.begin_put("13", 1000)  # small: held in memory until commit
    small.write(b"z" * 500)
    assert len(os.listdir(os.path.join(storage.root, "tmp"))) == 1
    storage.close()
    reopened = make(tmp_path)
    assert reopened.counters.swept_at_start == 1
    assert os.listdir(os.path.join(reopened.root, "tmp")) == []
    assert read(reopened, "11") == b"kept" and reopened.get("12") is None and reopened.get("13") is None


def test_lru_eviction_counts_a_get_as_use(tmp_path):
    unit = MiB - HEADER_SIZE
    storage = make(tmp_path, max_bytes=3 * MiB, max_artifact_bytes=MiB)
    for key in ("1", "2", "3"):
        put(storage, key, os.urandom(unit))
    assert read(storage, "1") is not None  # "2" is now the least recently used
    put(storage, "4", os.urandom(unit))
    storage.flush()
    assert storage.get("2") is None
    assert all(storage.contains(k) for k in ("1", "3", "4"))
    assert storage.stats().bytes <= 3 * MiB
    assert storage.counters.evictions == 1
    assert not os.path.exists(entry_path(storage, "2"))
    assert os.listdir(os.path.join(storage.root, "trash")) == []


def test_lru_order_survives_restart(tmp_path):
    unit = MiB - HEADER_SIZE
    storage = make(tmp_path, max_bytes=3 * MiB, max_artifact_bytes=MiB)
    for key in ("1", "2", "3"):
        put(storage, key, os.urandom(unit))
    for key, when in (("1", 3000), ("2", 1000), ("3", 2000)):
        os.utime(entry_path(storage, key), (when, when))
    storage.close()
    storage = make(tmp_path, max_bytes=3 * MiB, max_artifact_bytes=MiB)
    put(storage, "4", os.urandom(unit))
    storage.flush()
    assert not storage.contains("2") and storage.contains("1") and storage.contains("3")


def test_an_entry_being_read_survives_its_eviction(tmp_path):
    storage = make(tmp_path, max_bytes=2 * MiB, max_artifact_bytes=2 * MiB - HEADER_SIZE)
    body = os.urandom(2 * MiB - HEADER_SIZE)
    put(storage, "8", body)
    blob = storage.get("8")
    put(storage, "9", os.urandom(2 * MiB - HEADER_SIZE))  # evicts "8" while it is open
    storage.flush()
    assert not storage.contains("8")
    assert os.pread(blob.fd, blob.size, blob.offset) == body
    blob.close()


def test_limits(tmp_path):
    storage = make(tmp_path, max_bytes=2 * MiB, max_artifact_bytes=MiB)
    with pytest.raises(ArtifactTooLarge):
        storage.begin_put("1", MiB + 1)
    first = storage.begin_put("2", MiB, owner="a")
    second = storage.begin_put("3", MiB - 2 * HEADER_SIZE, owner="b")
    with pytest.raises(NotStored, match="do not fit"):  # everything is reserved by uploads in flight
        storage.begin_put("4", 1000, owner="c")
    first.abort()
    second.abort()
    assert storage.stats().reserved_bytes == 0


def test_disk_headroom_evicts_own_entries_then_refuses(tmp_path):
    storage = make(tmp_path)
    put(storage, "1", os.urandom(MiB))
    st = os.statvfs(storage.root)
    free = st.f_bavail * st.f_frsize
    storage.min_free_bytes = free - MiB // 2  # only ~0.5 MiB may still be written
    upload = storage.begin_put("2", MiB // 2)  # fits once "1" is evicted
    upload.write(b"z" * (MiB // 2))
    upload.commit()
    storage.flush()
    assert not storage.contains("1") and storage.contains("2")
    storage.min_free_bytes = free + 10 * MiB
    with pytest.raises(NotStored, match="--min-free-disk"):
        storage.begin_put("3", 10)
    assert storage.contains("2"), "refusing must not evict for nothing"
    assert storage.counters.last_error.op == "put"


@pytest.mark.parametrize("damage", ["truncate", "flip_small", "garbage_header", "grow"])
def test_damaged_entries_read_as_miss_and_are_quarantined(tmp_path, damage):
    storage = make(tmp_path)
    body = os.urandom(1000 if damage == "flip_small" else 200_000)
    put(storage, "42", body)
    path = entry_path(storage, "42")
    with open(path, "r+b") as fh:
        if damage == "truncate":
            fh.truncate(HEADER_SIZE + len(body) // 2)
        elif damage == "flip_small":
            fh.seek(HEADER_SIZE + 500)
            fh.write(bytes([body[500] ^ 1]))
        elif damage == "garbage_header":
            fh.write(b"JUNK")
        else:
            fh.seek(0, 2)
            fh.write(b"extra")
    assert storage.get("42") is None
    assert not storage.contains("42") and not os.path.exists(path)
    assert storage.counters.damaged == 1
    assert len(os.listdir(os.path.join(storage.root, "quarantine"))) == 1
    put(storage, "42", body)  # a fresh upload of the key works again
    assert read(storage, "42") == body


def test_scrub_finds_a_bit_flip_in_a_large_entry(tmp_path):
    storage = make(tmp_path)
    good, bad = os.urandom(3 * MiB), os.urandom(3 * MiB)
    put(storage, "1", good)
    put(storage, "2", bad)
    with open(entry_path(storage, "2"), "r+b") as fh:
        fh.seek(HEADER_SIZE + 2 * MiB)
        fh.write(bytes([bad[2 * MiB] ^ 0x80]))
    report = storage.scrub()
    assert (report.checked, report.damaged) == (2, 1)
    assert report.bytes_read == 6 * MiB
    assert storage.get("2") is None and read(storage, "1") == good


def test_short_files_found_at_start_are_quarantined(tmp_path):
    storage = make(tmp_path)
    put(storage, "55", b"body")
    storage.close()
    with open(entry_path(storage, "55"), "r+b") as fh:
        fh.truncate(10)
    reopened = make(tmp_path)
    assert not reopened.contains("55") and reopened.counters.damaged == 1


def test_keys_are_validated(tmp_path):
    storage = make(tmp_path)
    # Non-ASCII letters and digits too: str.isalnum alone would let them through.
    for key in ("../etc", "a/b", "", "x" * 129, "ab.c", "%2e%2e", "ab\n", "\u0663", "\uff41", "\u00df", "\u00b2", "a\x00"):
        with pytest.raises(ValueError):
            storage.get(key)
        with pytest.raises(ValueError):
            storage.begin_put(key, 1)


def test_parallel_puts_and_gets_from_threads(tmp_path):
    storage = make(tmp_path, max_bytes=8 * MiB, max_artifact_bytes=MiB)
    bodies = {str(i): os.urandom(200_000 + i) for i in range(60)}
    errors = []

    def worker(keys):
        try:
            for key in keys:
                put(storage, key, bodies[key])
                got = read(storage, key)
                assert got is None or got == bodies[key]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(list(bodies)[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    storage.flush()
    assert errors == []
    stats = storage.stats()
    assert stats.bytes <= 8 * MiB and stats.reserved_bytes == 0
    on_disk = sum(len(files) for _, _, files in os.walk(os.path.join(storage.root, "entries")))
    assert on_disk == stats.entries
    for key in bodies:
        got = read(storage, key)
        assert got is None or got == bodies[key]


def test_abort_after_commit_keeps_the_entry_and_the_accounting(tmp_path):
    storage = make(tmp_path)
    upload = storage.begin_put("60", 3)
    upload.write(b"abc")
    upload.commit()
    upload.abort()  # what a cancelled request handler does after the commit thread finished
    assert read(storage, "60") == b"abc"
    assert storage.stats().reserved_bytes == 0 and storage.stats().bytes == storage.room.block
    with pytest.raises(RuntimeError):
        upload.commit()


def test_a_refused_upload_evicts_nothing_even_when_over_the_cap(tmp_path):
    unit = MiB - HEADER_SIZE
    storage = make(tmp_path, max_bytes=2 * MiB, max_artifact_bytes=MiB)
    put(storage, "1", os.urandom(unit))
    put(storage, "2", os.urandom(unit))
    storage.min_free_bytes = 1 << 60  # the disk check will refuse
    with pytest.raises(NotStored):
        storage.begin_put("3", unit)  # would have evicted "1" for the cap
    assert list(storage._lru) == ["1", "2"] and storage.stats().bytes == 2 * MiB
    assert os.path.exists(entry_path(storage, "1"))


def test_an_unindexed_file_is_adopted_instead_of_blocking_its_key_forever(tmp_path):
    storage = make(tmp_path)
    put(storage, "70", b"orphan")
    with storage._lock:
        storage._lru.remove("70")  # as if the index lost it
    upload = storage.begin_put("70", 3)
    upload.write(b"new")
    with pytest.raises(EntryExists):
        upload.commit()
    assert read(storage, "70") == b"orphan"


def test_small_bodies_are_served_from_memory_once_verified(tmp_path):
    storage = make(tmp_path, memory_cache_bytes=MiB)
    body = os.urandom(4096)
    put(storage, "71", body)  # an upload enters memory only when it is first read
    assert storage.stats().memory_bytes == 0
    assert read(storage, "71") == body and storage.counters.memory_hits == 0
    assert storage.stats().memory_bytes == 4096
    assert read(storage, "71") == body and storage.counters.memory_hits == 1
    storage.close()
    storage = make(tmp_path, memory_cache_bytes=MiB)  # a restart: memory is empty
    assert read(storage, "71") == body  # from disk: verified, then kept
    assert storage.counters.memory_hits == 0 and storage.stats().memory_bytes == 4096
    os.unlink(entry_path(storage, "71"))  # proves the next hit does no I/O
    assert read(storage, "71") == body
    assert storage.counters.memory_hits == 1
    big = os.urandom(64 * 1024 + 1)  # above the inline size: never held in memory
    put(storage, "72", big)
    assert read(storage, "72") == big and storage.stats().memory_bytes == 4096


def test_uploads_do_not_push_read_bodies_out_of_memory(tmp_path):
    storage = make(tmp_path, memory_cache_bytes=3 * 4096)
    for key in ("r1", "r2", "r3"):
        put(storage, key, key.encode() * 2048)
        assert read(storage, key) == key.encode() * 2048  # read once: now in memory
    for i in range(10):
        put(storage, f"w{i}", os.urandom(4096))  # written, never read
    for key in ("r1", "r2", "r3"):
        os.unlink(entry_path(storage, key))  # a hit can only come from memory now
        assert read(storage, key) == key.encode() * 2048
    assert storage.counters.memory_hits == 3


def test_memory_copy_goes_with_its_entry(tmp_path):
    storage = make(tmp_path, memory_cache_bytes=MiB, max_bytes=3 * (40_000 + HEADER_SIZE))
    put(storage, "81", b"a" * 40_000)
    assert read(storage, "81") == b"a" * 40_000
    assert storage.stats().memory_bytes == 40_000
    put(storage, "82", b"b" * 40_000)
    put(storage, "83", b"c" * 40_000)
    put(storage, "84", b"d" * 40_000)  # evicts 81, the least recently used
    storage.flush()
    assert read(storage, "81") is None and storage.stats().memory_bytes == 0
    put(storage, "81", b"new" * 10)  # the same key stored again is read fresh, not from memory
    assert read(storage, "81") == b"new" * 10


def test_memory_copy_is_dropped_when_scrub_quarantines_the_file(tmp_path):
    storage = make(tmp_path, memory_cache_bytes=MiB)
    put(storage, "91", b"x" * 5000)
    assert read(storage, "91") == b"x" * 5000
    with open(entry_path(storage, "91"), "r+b") as fh:
        fh.seek(HEADER_SIZE + 10)
        fh.write(b"y")
    assert storage.scrub().damaged == 1
    assert read(storage, "91") is None and storage.stats().memory_bytes == 0


def test_memory_hits_go_back_to_disk_once_per_atime_interval(tmp_path):
    storage = make(tmp_path, memory_cache_bytes=MiB)
    put(storage, "93", b"z" * 5000)
    assert read(storage, "93") == b"z" * 5000
    os.truncate(entry_path(storage, "93"), HEADER_SIZE + 100)
    assert read(storage, "93") == b"z" * 5000  # memory: the file was verified a moment ago
    storage._atime_saved["93"] -= 7200  # an interval later, the hit re-reads and re-verifies the file
    assert read(storage, "93") is None and storage.counters.damaged == 1


def test_memory_cache_is_bounded(tmp_path):
    storage = make(tmp_path, memory_cache_bytes=100_000)
    for i in range(10):
        put(storage, f"6{i}", bytes([i]) * 30_000)
        assert read(storage, f"6{i}") == bytes([i]) * 30_000
        assert storage.stats().memory_bytes <= 100_000
    assert storage.stats().memory_bytes == 90_000


@pytest.mark.parametrize("size", [100, 3 * MiB])
def test_staged_commit_publishes_after_sync_or_withdraws_on_a_sync_error(tmp_path, size):
    storage = make(tmp_path, fsync=True)
    body = os.urandom(size)
    upload = storage.begin_put("41", size)
    upload.write(body)
    staged = upload.stage()
    assert os.path.exists(entry_path(storage, "41")) and storage.get("41") is None  # linked, not yet indexed
    assert staged.directory == os.path.dirname(entry_path(storage, "41"))
    assert os.fstat(staged.fd).st_ino == os.stat(entry_path(storage, "41")).st_ino
    assert sync_staged([staged]) == [None]
    upload.publish(staged, None)
    with pytest.raises(OSError):
        os.fstat(staged.fd)  # publish closed it
    assert read(storage, "41") == body and storage.stats().reserved_bytes == 0
    upload = storage.begin_put("42", size)
    upload.write(body)
    staged = upload.stage()
    with pytest.raises(NotStored, match="Input/output error"):
        upload.publish(staged, OSError(5, "Input/output error"))
    assert not os.path.exists(entry_path(storage, "42")) and storage.get("42") is None
    assert storage.stats().reserved_bytes == 0 and storage.counters.last_error.op == "put"
    upload.abort()  # a no-op after stage
    assert storage.stats().reserved_bytes == 0


def test_staged_commit_loses_a_race_with_409(tmp_path):
    storage = make(tmp_path, fsync=True)
    first, second = storage.begin_put("43", 10), storage.begin_put("43", 10)
    first.write(b"a" * 10)
    second.write(b"b" * 10)
    staged = first.stage()
    with pytest.raises(EntryExists):
        second.stage()
    first.publish(staged, None)
    assert read(storage, "43") == b"a" * 10 and storage.stats().reserved_bytes == 0


class Told:
    def __init__(self):
        self.lines = []

    def added(self, key, size):
        self.lines.append(("A", key, size))

    def removed(self, key):
        self.lines.append(("R", key))

    def touched(self, key):
        self.lines.append(("T", key))

    def caught_up(self):
        return False  # nothing is passed between them: never sure


def two_workers(tmp_path, **kw):
    """Two indexes on one directory, as two worker processes have, with nothing passed between them."""
    first = make(tmp_path, SharedDiskStorage, **kw)
    second = make(tmp_path, SharedDiskStorage, **kw)
    first.peers, second.peers = Told(), Told()
    return first, second


@pytest.mark.parametrize("size", [100, 200_000])
def test_shared_index_finds_what_another_worker_published(tmp_path, size):
    a, b = two_workers(tmp_path)
    body = os.urandom(size)
    put(a, "sharedk1", body)
    entry = a.room.charge(size + HEADER_SIZE)
    assert ("A", "sharedk1", entry) in a.peers.lines
    assert read(b, "sharedk1") == body  # never told: found on disk, then indexed
    assert b.stats().entries == 1
    assert ("A", "sharedk1", entry) in b.peers.lines
    assert read(b, "nosuchk") is None
    with pytest.raises(EntryExists):
        b.begin_put("sharedk1", size)


def test_single_process_index_does_not_look_on_disk_for_unknown_keys(tmp_path):
    a, b = two_workers(tmp_path)
    b.peers = None
    put(a, "solok1", b"x" * 100)
    assert read(b, "solok1") is None


def test_replica_updates_apply_without_echo(tmp_path):
    a, b = two_workers(tmp_path, memory_cache_bytes=1 * MiB)
    put(a, "repk1", b"y" * 100)
    b.replica_added("repk1", 100 + HEADER_SIZE)
    assert read(b, "repk1") == b"y" * 100  # now also in b's memory
    os.unlink(entry_path(a, "repk1"))
    b.replica_removed("repk1")
    assert read(b, "repk1") is None  # gone from b's index and memory alike
    assert b.stats().memory_bytes == 0
    assert ("A", "repk1", 100 + HEADER_SIZE) not in b.peers.lines and ("R", "repk1") not in b.peers.lines


def test_a_key_another_worker_removed_can_be_stored_again_before_the_news_arrives(tmp_path):
    a, b = two_workers(tmp_path)
    put(a, "gonek1", b"z" * 100)
    assert read(b, "gonek1") == b"z" * 100  # b indexes it
    os.unlink(entry_path(a, "gonek1"))  # a quarantines or evicts it; b is not told yet
    put(b, "gonek1", b"w" * 100)  # not a 409: the file is gone
    assert read(a, "gonek1") == b"w" * 100
    assert ("R", "gonek1") in b.peers.lines


def test_eviction_is_told_and_counted_only_by_the_worker_that_moved_the_file(tmp_path):
    size = 5000  # over a block: an entry is charged its size
    entry = size + HEADER_SIZE
    a, b = two_workers(tmp_path, max_bytes=3 * entry, max_artifact_bytes=size)
    for key in ("ev1", "ev2", "ev3"):
        put(a, key, os.urandom(size))
        b.replica_added(key, entry)
    put(a, "ev4", os.urandom(size))  # a evicts ev1
    put(b, "ev5", os.urandom(size))  # b has not heard of either: it evicts ev1 too, and finds it gone
    assert ("R", "ev1") in a.peers.lines and ("R", "ev1") in b.peers.lines
    assert (a.counters.evictions, b.counters.evictions) == (1, 0)

    def on_disk():
        return sorted(os.listdir(os.path.join(a.root, "entries", "ev")))

    # Over the cap by b's upload until the replicas hear of each other's entries; the next
    # upload anywhere then evicts back under it.
    assert on_disk() == ["ev2", "ev3", "ev4", "ev5"]
    a.replica_removed("ev1")
    a.replica_added("ev5", entry)
    b.replica_added("ev4", entry)
    put(a, "ev6", os.urandom(size))
    assert on_disk() == ["ev4", "ev5", "ev6"]
    assert a.counters.evictions == 3


def test_hits_are_told_for_lru_order(tmp_path):
    a, b = two_workers(tmp_path, memory_cache_bytes=1 * MiB)
    put(a, "hitk1", b"z" * 10)
    read(a, "hitk1")
    read(a, "hitk1")
    assert a.peers.lines.count(("T", "hitk1")) == 2


def test_heads_without_bodies_evict_nothing_and_only_arriving_bytes_do(tmp_path):
    """#26 (3): a PUT's Content-Length used to be evicted for when its head arrived, so heads
    that never send a byte could empty the cache."""
    unit = MiB - HEADER_SIZE
    storage = make(tmp_path, max_bytes=32 * MiB, max_artifact_bytes=16 * MiB, max_in_flight_per_owner=64 * MiB)
    for i in range(32):
        put(storage, f"1{i}", b"x" * unit)
    heads = [storage.begin_put(f"9{i}", 8 * MiB - HEADER_SIZE, owner=f"t{i}") for i in range(3)]
    storage.flush()
    assert storage.stats().entries == 32, "a head alone evicted entries"
    heads[0].write(b"y" * MiB)  # one MiB arrives: about one entry makes room for it
    storage.flush()
    assert storage.stats().entries == 31
    assert storage.stats().reserved_bytes == 3 * 8 * MiB
    for head in heads:
        head.abort()
    assert storage.stats().reserved_bytes == 0


def test_one_token_cannot_promise_more_than_its_share(tmp_path):
    storage = make(tmp_path, max_bytes=64 * MiB, max_artifact_bytes=8 * MiB)
    assert storage.max_in_flight_per_owner == 16 * MiB  # a quarter of the cache by default
    first = storage.begin_put("1", 8 * MiB - HEADER_SIZE, owner="ci")
    second = storage.begin_put("2", 8 * MiB - HEADER_SIZE, owner="ci")
    with pytest.raises(NotStored, match="ci has 16777216 bytes of uploads in flight"):
        storage.begin_put("3", 1000, owner="ci")
    other = storage.begin_put("4", 1000, owner="agent-1")  # another token is not held back
    first.abort()
    third = storage.begin_put("3", 1000, owner="ci")  # room again once one ended
    for upload in (second, other, third):
        upload.abort()
    assert storage.stats().reserved_bytes == 0


def test_small_entries_that_use_up_the_inodes_evict_the_oldest_instead_of_refusing_forever(few_inodes):
    """On the old code the inodes ran out with bytes to spare, and every PUT after was a 403."""
    storage = DiskStorage(str(few_inodes / "store"), max_bytes=60 * MiB, max_artifact_bytes=MiB, min_free_bytes=0,
                          fsync=False, statvfs_max_age=0)
    for i in range(400):
        put(storage, f"k{i}", b"x")  # raises NotStored if refused
    storage.flush()
    st = os.statvfs(few_inodes)
    assert st.f_favail >= storage.room.min_free_files
    assert storage.contains("k399") and not storage.contains("k0")
    assert storage.stats().entries < 200 and storage.counters.evictions > 200


def test_an_unexpected_enospc_evicts_so_the_next_upload_fits(few_inodes):
    """statvfs read once and never again: the inodes run out behind the accounting's back."""
    storage = DiskStorage(str(few_inodes / "store"), max_bytes=60 * MiB, max_artifact_bytes=MiB, min_free_bytes=0,
                          fsync=False, statvfs_max_age=1e9, min_free_files=0)
    refused = []
    for i in range(400):
        try:
            put(storage, f"k{i}", b"x")
        except NotStored as exc:
            refused.append((i, str(exc)))
    assert refused and "No space left on device" in refused[0][1]
    # Each refusal makes room for the uploads after it: 16 entries go at once.
    assert all(later - earlier >= 8 for (earlier, _), (later, _) in zip(refused, refused[1:])), refused
    assert storage.contains("k399")
    assert storage.counters.last_error is not None and storage.counters.evictions > 0


def test_every_entry_is_charged_at_least_one_block(tmp_path):
    storage = make(tmp_path)
    block = storage.room.block
    storage = make(tmp_path / "capped", max_bytes=10 * block, max_artifact_bytes=block)
    for i in range(30):
        put(storage, f"b{i}", b"y")
    assert storage.stats().entries == 10 and storage.stats().bytes == 10 * block


def test_max_entries_keeps_the_most_recently_used(tmp_path):
    storage = make(tmp_path, max_entries=5)
    for i in range(8):
        put(storage, f"m{i}", os.urandom(100))
        read(storage, "m0")  # kept in use
    storage.flush()
    assert storage.stats().entries == 5
    assert [k for k in ("m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7") if storage.contains(k)] == \
        ["m0", "m4", "m5", "m6", "m7"]
    reopened = make(tmp_path, max_entries=3)  # a lower cap applies at start too
    assert reopened.stats().entries == 3
