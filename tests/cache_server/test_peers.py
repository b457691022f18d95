"""PeerLink in one process: real datagram socketpairs and real indexes on one directory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import pytest

from cache_server.replication import peers as peers_module
from cache_server.replication.peers import PeerLink, make_announcements, make_inboxes
from cache_server.replication.storage import SharedDiskStorage
from cache_server.storage.disk import INLINE_MAX
from cache_server.storage.errors import EntryExists
from cache_server.storage.entry_format import HEADER_SIZE


def storage(tmp_path) -> SharedDiskStorage:
    return SharedDiskStorage(str(tmp_path / "store"), max_bytes=1 << 30, max_artifact_bytes=1 << 20, min_free_bytes=0,
                       fsync=False, memory_cache_bytes=1 << 20)


def mesh(count: int, announced: bool = True) -> list[PeerLink]:
    inboxes = make_inboxes(count)
    counters = make_announcements(count) if announced else None
    return [PeerLink(i, inboxes[i][0], {j: inboxes[j][1] for j in range(count) if j != i}, counters)
            for i in range(count)]


def hand_copy(src: SharedDiskStorage, key: str, new_key: str) -> None:
    """An entry file that appears without an announcement (copied in by hand)."""
    with open(src.entry_path(key), "rb") as fh:
        data = fh.read()
    os.makedirs(os.path.dirname(src.entry_path(new_key)), exist_ok=True)
    with open(src.entry_path(new_key), "wb") as fh:
        fh.write(data)


def put(store: SharedDiskStorage, key: str, body: bytes) -> None:
    upload = store.begin_put(key, len(body))
    upload.write(body)
    upload.commit()


@contextlib.asynccontextmanager
async def two_linked(tmp_path, announced: bool = True):
    """Two replicas of one directory, linked as two workers are: (a_store, b_store, a, b)."""
    a_store, b_store = storage(tmp_path), storage(tmp_path)
    a, b = mesh(2, announced)
    a.start(a_store, dict)
    b.start(b_store, dict)
    try:
        yield a_store, b_store, a, b
    finally:
        a.close()
        b.close()


async def until(check, timeout: float = 2.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def test_changes_reach_the_other_replica_and_totals_can_be_asked(tmp_path):
    async def scenario():
        a_store, b_store = storage(tmp_path), storage(tmp_path)
        a, b = mesh(2)
        a.start(a_store, lambda: {"who": "a", "entries": a_store.stats().entries})
        b.start(b_store, lambda: {"who": "b", "entries": b_store.stats().entries})
        body = os.urandom(5000)  # over a block: charged its size
        put(a_store, "meshk1", body)
        assert await until(lambda: "meshk1" in b_store._lru)
        assert b_store.stats().bytes == len(body) + HEADER_SIZE

        assert b_store.get("meshk1").inline == body  # b now holds it in memory too
        assert b_store.stats().memory_bytes == len(body)
        with a_store._lock:
            victims = a_store._lru.evict_until(0)  # evicted by a, as for an upload that needs room
        a_store._discard(victims)
        assert await until(lambda: "meshk1" not in b_store._lru)
        assert b_store.stats().memory_bytes == 0
        assert b_store.get("meshk1") is None

        answers = []
        b.gather(answers.append)
        assert await until(lambda: answers)
        assert answers == [[{"who": "a", "entries": 0}]]
        a.close()
        b.close()

    asyncio.run(scenario())


def test_hits_on_one_worker_order_the_others_lru(tmp_path):
    async def scenario():
        async with two_linked(tmp_path) as (a_store, b_store, a, b):
            for key in ("lru1", "lru2", "lru3"):
                put(a_store, key, b"x" * 100)
            assert await until(lambda: len(b_store._lru) == 3)
            assert list(b_store._lru)[0] == "lru1"
            a_store.get("lru1")
            assert await until(lambda: list(b_store._lru)[-1] == "lru1", timeout=1.0)

    asyncio.run(scenario())


def test_a_worker_that_stops_reading_costs_the_others_bounded_memory(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(peers_module, "OUTBOX_MAX_DATAGRAMS", 8)

    async def scenario():
        a_store = storage(tmp_path)
        a, stuck = mesh(2)  # `stuck` never starts: nobody reads its inbox
        a.start(a_store, dict)
        for i in range(3000):
            a.added(f"flood{i}" + "k" * 100, 1000)
            a._flush()
        assert len(a._peers[1].waiting) <= 8
        a.close()

    with caplog.at_level(logging.WARNING, logger="cache_server"):
        asyncio.run(scenario())
    assert "worker 1 is not reading its messages" in caplog.text


def test_a_peer_that_has_exited_is_skipped_and_questions_still_end(tmp_path):
    async def scenario():
        a_store = storage(tmp_path)
        inboxes = make_inboxes(2)
        a = PeerLink(0, inboxes[0][0], {1: inboxes[1][1]})
        inboxes[1][0].close()  # worker 1 is gone
        a.start(a_store, dict)
        put(a_store, "alone1", b"y" * 10)
        await asyncio.sleep(0.01)
        assert a._peers[1].gone
        answers = []
        a.gather(answers.append)
        assert await until(lambda: answers)
        assert answers == [[]]
        a.close()

    asyncio.run(scenario())


def test_a_replica_that_has_heard_every_announcement_answers_misses_without_looking_on_disk(tmp_path):
    async def scenario():
        async with two_linked(tmp_path) as (a_store, b_store, a, b):
            assert a.caught_up() and b.caught_up()  # nothing published yet
            put(a_store, "annk1", b"x" * 100)
            assert a.caught_up()  # its own entries are no news to it
            # Published and announced, but not read by b yet (this is the window after a's 200):
            # b is not sure, so it looks on disk and finds the entry.
            assert not b.caught_up()
            assert b_store.get("annk1").inline == b"x" * 100
            assert await until(b.caught_up)
            # Sure now: a key its replica lacks is a miss with no look on disk, so a file that
            # nobody announced stays unseen, as it does for a single process.
            hand_copy(a_store, "annk1", "annk2")
            assert b_store.get("annk2") is None
            b_store.begin_put("annk2", 100).abort()  # nor a 409 before the body (the link still refuses)

    asyncio.run(scenario())


def test_announcements_not_yet_read_keep_the_look_on_disk(tmp_path):
    async def scenario():
        a_store, b_store = storage(tmp_path), storage(tmp_path)
        a, b = mesh(2)
        b.start(b_store, dict)  # a never starts: its announcement below is counted but never sent,
        a.added("lost1", 100)  # as for lines dropped for a peer that stopped reading
        put(b_store, "seen1", b"y" * 100)
        hand_copy(b_store, "seen1", "lost1")
        assert not b.caught_up()
        assert b_store.get("lost1").inline == b"y" * 100
        for key in ("lost2", "lost3", "lost4"):
            a.added(key, 100)
            hand_copy(b_store, "seen1", key)
        small = b_store.begin_put("lost2", 100)  # a small body is held in memory: the link refuses it
        small.write(b"z" * 100)
        with pytest.raises(EntryExists):
            small.commit()
        with pytest.raises(EntryExists):
            b_store.begin_put("lost3", INLINE_MAX + 1)  # a large one is refused before it is written
        with pytest.raises(EntryExists):
            b_store.begin_put("lost4", 100, exact=True)  # and a small one when asked
        assert all(b_store.get(key).inline == b"y" * 100 for key in ("lost2", "lost3", "lost4"))
        assert b_store.stats().reserved_bytes == 0
        b.close()

    asyncio.run(scenario())


def test_without_counters_a_replica_always_looks_on_disk(tmp_path):
    async def scenario():
        async with two_linked(tmp_path, announced=False) as (a_store, b_store, a, b):
            put(a_store, "plain1", b"z" * 100)
            assert await until(lambda: "plain1" in b_store._lru)
            assert not b.caught_up()
            hand_copy(a_store, "plain1", "plain2")
            assert b_store.get("plain2").inline == b"z" * 100

    asyncio.run(scenario())
