"""A small time-bounded cache for the vault's lookups, with local invalidation.

Security decisions:

* **Bounded staleness.** An entry is served for at most ``ttl`` seconds after it was read
  from the store; a change made through *this* object invalidates it at once. Other nodes
  sharing the database therefore see a change within ``ttl``, this node at the next lookup.
* **No stale write-back.** A lookup that started before an invalidation does not put what
  it read into the cache afterwards (a generation counter tells), so a rotation is never
  hidden by a slow read of the previous value.
* **Bounded size.** At ``max_entries`` the oldest entry goes first, so lookups of many
  distinct names (including absent ones, which are cached too) cannot grow memory.
* **A clock going backwards expires entries** rather than extending them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

Value = TypeVar("Value")

DEFAULT_MAX_ENTRIES: Final = 4096


@dataclass(frozen=True, slots=True)
class _Entry(Generic[Value]):
    value: Value
    stored_at: float


class TtlCache(Generic[Value]):
    """Maps names to values read from the store; see the module docstring for the rules."""

    __slots__ = ("_clock", "_entries", "_generation", "_max_entries", "_ttl")

    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if ttl < 0:
            raise ValueError("cache ttl must not be negative")
        self._ttl, self._clock, self._max_entries = ttl, clock, max_entries
        self._entries: dict[str, _Entry[Value]] = {}
        self._generation = 0

    def __repr__(self) -> str:  # never the values: they may be secrets
        return f"TtlCache(ttl={self._ttl}, entries={len(self._entries)})"

    @property
    def generation(self) -> int:
        """Take it before a store read; hand it to :meth:`put` after."""
        return self._generation

    def get(self, name: str) -> tuple[bool, Value | None]:
        """``(True, value)`` for a fresh entry, ``(False, None)`` otherwise."""
        entry = self._entries.get(name)
        if entry is None:
            return False, None
        age = self._clock() - entry.stored_at
        if age < 0 or age >= self._ttl:
            del self._entries[name]
            return False, None
        return True, entry.value

    def put(self, name: str, value: Value, generation: int) -> None:
        """Remember ``value`` unless something was invalidated since ``generation``."""
        if self._ttl == 0 or generation != self._generation:
            return
        self._entries.pop(name, None)
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[name] = _Entry(value, self._clock())

    def invalidate(self, name: str | None = None) -> None:
        """Forget ``name`` (every name when ``None``) and refuse in-flight write-backs."""
        self._generation += 1
        if name is None:
            self._entries.clear()
        else:
            self._entries.pop(name, None)
