"""SingleFlight (the broker's shared store reads): one read per key and epoch, its answer or
its failure for every waiter, and no waiter at the mercy of another's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from tether.proxy.http.flight import SingleFlight


class SlowStore:
    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()

    async def get(self, key: str) -> str:
        self.reads += 1
        number = self.reads
        await self.gate.wait()
        if key == "broken":
            raise LookupError("the store failed")
        return f"value of {key} #{number}"


async def test_the_first_caller_hanging_up_does_not_cancel_the_others() -> None:
    # The read ran in the first caller's task: its agent hanging up cancelled the read and
    # every concurrent request for the same target died with CancelledError.
    store = SlowStore()
    flight = SingleFlight(store.get)
    first = asyncio.ensure_future(flight.get("api"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(flight.get("api"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    store.gate.set()
    assert await asyncio.wait_for(second, 5) == "value of api #1"
    assert first.cancelled() and store.reads == 1


async def test_one_read_shared_and_a_failure_reaches_every_waiter() -> None:
    store = SlowStore()
    flight = SingleFlight(store.get)
    waiters = [asyncio.ensure_future(flight.get("broken")) for _ in range(3)]
    await asyncio.sleep(0)
    store.gate.set()
    for waiter in waiters:
        with pytest.raises(LookupError, match="the store failed"):
            await waiter
    assert store.reads == 1
    assert await flight.get("api") == "value of api #2"  # failures are not kept


async def test_a_new_epoch_is_a_new_read() -> None:
    store, epoch = SlowStore(), [0]
    flight = SingleFlight(store.get, lambda: epoch[0])
    before = asyncio.ensure_future(flight.get("api"))
    await asyncio.sleep(0)
    epoch[0] += 1  # a change went through the store
    after = asyncio.ensure_future(flight.get("api"))
    await asyncio.sleep(0)
    store.gate.set()
    assert (await before, await after) == ("value of api #1", "value of api #2")


async def test_a_cached_answer_needs_no_read_and_a_miss_reads() -> None:
    store, cache = SlowStore(), {"api": "cached value"}
    flight = SingleFlight(store.get, peek=lambda key: (key in cache, cache.get(key)))
    tasks_before = len(asyncio.all_tasks())
    assert await flight.get("api") == "cached value"  # answered at once: no task, no read
    assert store.reads == 0 and len(asyncio.all_tasks()) == tasks_before
    cache.clear()  # the store's cache expired: a read, shared as before
    waiters = [asyncio.ensure_future(flight.get("api")) for _ in range(2)]
    await asyncio.sleep(0)
    store.gate.set()
    assert [await w for w in waiters] == ["value of api #1"] * 2 and store.reads == 1
