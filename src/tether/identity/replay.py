"""Replay caches: remember single-use values (DPoP ``jti``) until they could not be used.

The contract is one method, ``seen(key, expires_at) -> bool``: atomically, if ``key`` is
present and unexpired return ``True`` (a replay); otherwise record it until
``expires_at`` and return ``False``. Test-and-set in one step is what makes it safe: with
a separate "check" then "add", two requests carrying the same proof at the same instant
would both pass.

``MemoryReplayCache`` is the single-node implementation. Several Tether nodes behind a
load balancer need a shared one, or a proof replayed to another node would pass: the
PostgreSQL implementation (store layer) keeps the same contract with one statement,
``INSERT INTO replay (key, expires_at) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET
expires_at = EXCLUDED.expires_at WHERE replay.expires_at <= now() RETURNING key`` (no
row back = replay), plus a periodic ``DELETE`` of expired rows. Because that call is I/O,
async front-ends use ``DPoPVerifier.check`` (every check but the replay one) and then
``await`` the shared cache with the ``replay_key``/``replay_expires_at`` it returns;
the sync ``ReplayCache`` protocol below is what ``DPoPVerifier.verify`` calls.

Security decisions:

* **Bounded, and full means refuse.** When ``max_entries`` unexpired keys are held,
  ``seen`` raises ``ReplayCacheFull`` rather than evicting a live key: evicting would
  let the evicted proof be replayed (fail open). The caller answers 503. Filling it
  takes ``max_entries`` *valid* proofs within one validity window (60 s by default),
  and DPoP verification only records a jti after the proof and its token binding
  verified, so only holders of valid tokens can add entries.
* Keys are opaque strings chosen by the caller; the DPoP verifier hashes (jkt, jti) to a
  fixed-size key, so one client cannot burn another client's jti and memory per entry
  is bounded whatever the jti length.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from typing import Protocol


class ReplayCacheFull(Exception):
    """The replay cache is at capacity with unexpired entries; refuse (HTTP 503)."""


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
