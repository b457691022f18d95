from cache_server.storage.lru import SizedLRU


def test_evicts_least_recently_used_first():
    lru = SizedLRU()
    for key, size in [("a", 10), ("b", 20), ("c", 30)]:
        lru.add(key, size)
    assert lru.touch("a")
    assert lru.evict_until(35) == [("b", 20), ("c", 30)]
    assert list(lru) == ["a"] and lru.total == 10


def test_readd_replaces_size_and_moves_to_newest():
    lru = SizedLRU()
    lru.add("a", 10)
    lru.add("b", 5)
    lru.add("a", 7)
    assert lru.total == 12
    assert list(lru) == ["b", "a"]


def test_remove_and_unknown_keys():
    lru = SizedLRU()
    lru.add("a", 3)
    assert lru.remove("a") == 3
    assert lru.remove("a") is None
    assert not lru.touch("a")
    assert lru.total == 0 and len(lru) == 0


def test_evict_until_zero_empties_and_negative_limit_is_safe():
    lru = SizedLRU()
    lru.add("a", 1)
    lru.add("b", 1)
    assert [k for k, _ in lru.evict_until(-5)] == ["a", "b"]
    assert lru.evict_until(0) == []


def test_restore_oldest_undoes_an_eviction_in_order():
    lru = SizedLRU()
    for key in "abcd":
        lru.add(key, 1)
    victims = lru.evict_until(2)
    lru.restore_oldest(victims)
    assert list(lru) == ["a", "b", "c", "d"] and lru.total == 4
