"""Replay caches: remember single-use values (DPoP ``jti``) until they could not be used.

The contract is one method, ``seen(key, expires_at) -> bool``: atomically, if ``key`` is
present and unexpired return ``True`` (a replay); otherwise record it until
``expires_at`` and return ``False``. Test-and-set in one step is what makes it safe: with
a separate "check" then "add", two requests carrying the same proof at the same instant
would both pass.

``MemoryReplayCache`` is the in-process implementation. Where it lives depends on the
backend (DESIGN "Scale"):

* **SQLite**: one process serves a data directory; a SQLite data directory must never be
  served by two processes (nor two hosts) at once. Every ``IdentityService`` of the process
  on the same database shares one ``MemoryReplayCache`` (:func:`shared_memory_cache`, a
  process-wide registry keyed by the database file's resolved path), so a proof accepted by
  one is a replay for all, and the hot path makes no database round trip (no write and
  fsync per request).
* **PostgreSQL**: several nodes behind a load balancer share one database, so each node
  checks its own ``MemoryReplayCache`` first (cheap; it catches a replay to the same node
  without I/O) and then the shared table ``dpop_replay`` (migration 0009) with
  :func:`tether.store.replay.claim`, one statement: ``INSERT INTO dpop_replay (key,
  expires_at) VALUES (...) ON CONFLICT (key) DO UPDATE SET expires_at =
  EXCLUDED.expires_at WHERE dpop_replay.expires_at <= :now RETURNING key`` (no row back =
  replay). The revocation watcher deletes expired rows periodically. A database error
  during that check refuses the proof (``ReplayCheckFailed``, a ``ReplayCacheFull``:
  HTTP 503), never passes it.

Because the shared check is I/O, :meth:`IdentityService.verify_proof` uses
``DPoPVerifier.check`` (every check but the replay one) and then the caches above with the
``replay_key``/``replay_expires_at`` it returns; the sync ``ReplayCache`` protocol below is
what ``DPoPVerifier.verify`` calls.

Security decisions:

* **Bounded, and full means refuse.** When ``max_entries`` unexpired keys are held,
  ``seen`` raises ``ReplayCacheFull`` rather than evicting a live key: evicting would
  let the evicted proof be replayed (fail open). The caller answers 503. Filling it
  takes ``max_entries`` *valid* proofs within one validity window (60 s by default),
  and DPoP verification only records a jti after the proof and its token binding
  verified, so only holders of valid tokens can add entries (at the token endpoint, of a
  join token unused or a workload token that verified: a proof is signed by a key of the
  client's own, so a proof alone proves nothing).
* Keys are opaque strings chosen by the caller; the DPoP verifier hashes (jkt, jti) to a
  fixed-size key, so one client cannot burn another client's jti and memory per entry
  is bounded whatever the jti length.
"""

from __future__ import annotations

import heapq
import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol


class ReplayCacheFull(Exception):
    """The replay cache is at capacity with unexpired entries; refuse (HTTP 503)."""


class ReplayCheckFailed(ReplayCacheFull):
    """The shared replay check could not be made (database error); refuse (HTTP 503)."""


class ReplayCache(Protocol):
    """Atomic test-and-set of single-use keys with an expiry (UNIX seconds)."""

    def seen(self, key: str, expires_at: float) -> bool:
        """``True`` if ``key`` is already recorded and unexpired; else record it."""
        ...


class MemoryReplayCache:
    """An in-process ``ReplayCache``; thread-safe; expired keys are purged as time passes."""

    def __init__(self, clock: Callable[[], float], *, max_entries: int = 100_000) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._clock = clock
        self._max = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, key: str, expires_at: float) -> bool:
        """Atomically report a replay of ``key``, or record it until ``expires_at``."""
        now = self._clock()
        with self._lock:
            self._purge(now)
            current = self._expiry.get(key)
            if current is not None and current > now:
                return True
            if expires_at <= now:
                return False  # already expired: nothing could replay it later
            if len(self._expiry) >= self._max:
                raise ReplayCacheFull("replay cache full")
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return False

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            if self._expiry.get(key, now + 1) <= now:
                del self._expiry[key]


_SHARED: weakref.WeakValueDictionary[str, MemoryReplayCache] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def shared_memory_cache(database: str, clock: Callable[[], float]) -> MemoryReplayCache:
    """The process's one ``MemoryReplayCache`` for the SQLite database file ``database``.

    Keyed by the file's resolved path, so every service of this process on that database
    sees the same single-use keys. An in-memory database (``""``, ``:memory:``) is private
    to its connection, so it gets a cache of its own. The cache lives while a service holds
    it; ``clock`` is used by the cache this call creates (services of one process share
    the system clock).
    """
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return MemoryReplayCache(clock)
    path = os.path.realpath(database)
    with _SHARED_LOCK:
        cache = _SHARED.get(path)
        if cache is None:
            cache = MemoryReplayCache(clock)
            _SHARED[path] = cache
        return cache
