"""Single-flight lookups: concurrent requests that need the same cached value share one
store query.

The stores the broker reads per request (targets, secrets, agent labels) cache each value
for about a second. When an entry expires under load, every request in flight would miss
at once and send its own query (16 connections: 16 queries, and the store's connection
pool overflowing). :class:`SingleFlight` lets the first caller query and the others await
its answer; the store's own cache and its expiry rule are unchanged, so a rotated secret or
a changed target is still seen within the store's bound.

Security decisions: callers share only an answer that was in flight when they asked (never
an older one), and a failure reaches every waiter as the same exception, so nobody gets a
value the store did not give. The read is a task of its own, so the request that started it
cannot cancel it for the others (an agent hanging up at the right moment used to end every
concurrent request for the same target with a CancelledError). With ``epoch`` (the store's
invalidation counter), a caller never joins a read that started before a change went through
the store: a request that arrives after a rotation returned to the admin must not get the
value a read in flight took from the database before it (it would inject the rotated-out
secret).

With ``peek`` (the store's own cache, read without I/O), a value the store would answer
from its cache is answered at once, with no task: a request's three lookups (target,
agent labels, secret) cost a task and a shield each otherwise (measured on uvloop: 2.9
us a lookup against 0.25, ~8 us of the event loop per brokered request). ``peek``
answers exactly what ``fetch`` would answer from its cache at that moment, so neither
freshness rule changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """At most one call of ``fetch(key)`` in flight per key."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[T]],
        epoch: Callable[[], int] = lambda: 0,
        peek: Callable[[str], tuple[bool, T | None]] | None = None,
    ) -> None:
        self._fetch, self._epoch, self._peek = fetch, epoch, peek
        self._inflight: dict[Hashable, asyncio.Future[T]] = {}

    async def get(self, key: str) -> T:
        if self._peek is not None:
            hit, value = self._peek(key)
            if hit:
                return value  # type: ignore[return-value] # a hit is the fetch's answer
        flight = (key, self._epoch())
        pending = self._inflight.get(flight)
        if pending is None:
            # A task of its own, not the first caller's: a request whose agent hangs up
            # cancels its own wait, never the read the other requests are waiting for.
            pending = asyncio.ensure_future(self._fetch(key))
            self._inflight[flight] = pending
            pending.add_done_callback(lambda done: self._landed(flight, done))
        return await asyncio.shield(pending)

    def _landed(self, flight: Hashable, done: asyncio.Future[T]) -> None:
        if self._inflight.get(flight) is done:
            del self._inflight[flight]
        if not done.cancelled():
            done.exception()  # retrieved: the waiters re-raise it; nobody else logs it
