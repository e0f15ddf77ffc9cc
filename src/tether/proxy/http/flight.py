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
value the store did not give. With ``epoch`` (the store's invalidation counter), a caller
never joins a read that started before a change went through the store: a request that
arrives after a rotation returned to the admin must not get the value a read in flight
took from the database before it (it would inject the rotated-out secret).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """At most one call of ``fetch(key)`` in flight per key."""

    def __init__(
        self, fetch: Callable[[str], Awaitable[T]], epoch: Callable[[], int] = lambda: 0
    ) -> None:
        self._fetch, self._epoch = fetch, epoch
        self._inflight: dict[Hashable, asyncio.Future[T]] = {}

    async def get(self, key: str) -> T:
        flight = (key, self._epoch())
        pending = self._inflight.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            value = await self._fetch(key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved: the waiters re-raise it
            raise
        finally:
            del self._inflight[flight]
        future.set_result(value)
        return value
