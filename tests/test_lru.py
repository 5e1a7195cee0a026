"""The inode cache's LRU mapping on its own."""

from __future__ import annotations

from onitufs.lru import LRU


def test_the_least_recently_used_goes_first() -> None:
    cache: LRU[int, str] = LRU(maxsize=2)
    cache.put(1, "one")
    cache.put(2, "two")
    assert cache.get(1) == "one"  # 1 is now more recent than 2
    assert cache.put(3, "three") == "two"  # dropped to make room
    assert cache.get(2) is None
    assert (cache.get(1), cache.get(3)) == ("one", "three")


def test_replacing_an_item_makes_it_recent_and_keeps_one_copy() -> None:
    cache: LRU[int, str] = LRU(maxsize=2)
    cache.put(1, "one")
    cache.put(2, "two")
    cache.put(1, "uno")
    cache.put(3, "three")
    assert (cache.get(1), cache.get(2), cache.get(3)) == ("uno", None, "three")


def test_pop() -> None:
    cache: LRU[int, str] = LRU(maxsize=4)
    cache.put(1, "one")
    cache.put(2, "two")
    assert cache.pop(1) == "one"
    assert cache.pop(1) is None
    assert cache.get(2) == "two"
