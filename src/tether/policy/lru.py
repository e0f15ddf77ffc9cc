"""A least-recently-used map bounded in entries and in total weight, for the SQL caches.

Every read and write holds a lock, so one map can be shared by threads; values are expected to
be immutable (the map hands out the stored object itself).
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A least-recently-used map bounded in entries and in total weight; locked throughout."""

    def __init__(self, entries: int, budget: int) -> None:
        self._entries = entries
        self._budget = budget
        self._weight = 0
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            self._data.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V, weight: int) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._data[key] = (value, weight)
            self._weight += weight
            while self._data and (len(self._data) > self._entries or self._weight > self._budget):
                self._weight -= self._data.popitem(last=False)[1][1]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._weight = 0

    def __len__(self) -> int:
        return len(self._data)
