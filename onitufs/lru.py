"""A mapping that keeps the most recently used items and drops the least recently used.

It lives on OrderedDict's C methods: cachetools' LRUCache, written in Python,
took half of readdir's own time in a 100,000-file tree, where each entry's inode
goes in and another goes out.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The item, now the most recently used; None if not kept."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V | None:
        """Keep the item as the most recently used; the item dropped to make room, if any."""
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.maxsize:
            return self._items.popitem(last=False)[1]
        return None

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)
