"""The agents' states (active, disabled, offboarded) as one node knows them.

Every use of a credential checks its agent's state (``IdentityService.check_live``), so the
state is cached: for at most ``ttl`` seconds (the revocation poll interval), after which
the next use reads it again. Two things keep the store out of the per-request path:

* **Single-flight**: when an entry expires under load, concurrent callers share one store
  read instead of each opening a connection (a burst of requests once cost a connection,
  and with aiosqlite a thread, per request). The read runs in a task of its own, so a
  caller cancelled while waiting does not cancel the read the others wait for.
* **The revocation watcher refreshes every cached agent** in one query per poll
  (:meth:`AgentStates.refresh`), before the entries expire, so a busy node reads each
  agent's state about once a second whatever its request rate.

Security decisions:

* **The bound is unchanged**: an entry is answered for at most ``ttl`` seconds after the
  read that produced it *started*, so a change made on another node is seen within one
  poll interval whether the watcher runs or not.
* **A local change wins at once**: :meth:`forget` drops the entry and the read in flight;
  a read that started before it does not store its (maybe stale) answer, and callers
  arriving after it start a fresh read.
* **Unknown is not active**: an agent missing from the store is ``unknown``, refused by
  the caller like any state other than ``active``.
* **A row that does not verify is not active**: an agent whose row's seal is missing or
  wrong (changed outside Tether: migration 0016, :mod:`tether.crypto.seal`), or whose row
  is older than one this node admitted (put back: migration 0022,
  :mod:`tether.crypto.revisions`), is ``unverified`` (an error is logged), refused like
  ``unknown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.crypto.seal import RowSealer
from tether.store import agents as agent_store
from tether.store.identity import agent_admitted
from tether.store.schema import agents

UNKNOWN: Final = "unknown"
UNVERIFIED: Final = "unverified"
_REFRESH_CHUNK: Final = 500
_MAX_ENTRIES: Final = 100_000


class AgentStates:
    """Agents' states read from the store, cached ``ttl`` seconds, read single-flight."""

    def __init__(
        self, engine: AsyncEngine, sealer: RowSealer, ttl: float, clock: Callable[[], float]
    ) -> None:
        self._engine, self._sealer, self._ttl, self._clock = engine, sealer, ttl, clock
        self._cache: dict[str, tuple[str, float]] = {}  # agent -> (state, read started at)
        self._reading: dict[str, asyncio.Future[str]] = {}
        self._forgets = 0  # bumped by forget(): reads started before it store nothing
        self.reads = 0  # store reads of one agent, for the tests and the benchmark

    async def get(self, agent_id: str) -> str:
        """The agent's state, at most ``ttl`` seconds old."""
        cached = self._cache.get(agent_id)
        if cached is not None and 0 <= self._clock() - cached[1] < self._ttl:
            return cached[0]
        reading = self._reading.get(agent_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read(agent_id))
            self._reading[agent_id] = reading
            reading.add_done_callback(lambda done: self._done(agent_id, done))
        return await asyncio.shield(reading)

    def _done(self, agent_id: str, reading: asyncio.Future[str]) -> None:
        if self._reading.get(agent_id) is reading:
            del self._reading[agent_id]
        if not reading.cancelled():
            reading.exception()  # retrieved: every waiter re-raises it

    async def _read(self, agent_id: str) -> str:
        started, forgets = self._clock(), self._forgets
        self.reads += 1
        state: str
        try:
            async with self._engine.connect() as conn:
                agent = await agent_store.verified_agent(conn, self._sealer, agent_id)
            state = UNKNOWN if agent is None else agent.state
        except agent_store.AgentUnverified:
            state = UNVERIFIED
        if forgets == self._forgets:
            self._store({agent_id: state}, started)
        return state

    async def refresh(self) -> int:
        """Re-read the state of every cached agent (one query per 500); returns how many."""
        started, forgets = self._clock(), self._forgets
        ids = list(self._cache)
        states: dict[str, str] = dict.fromkeys(ids, UNKNOWN)
        if not ids:
            return 0
        async with self._engine.connect() as conn:
            for start in range(0, len(ids), _REFRESH_CHUNK):
                chunk = ids[start : start + _REFRESH_CHUNK]
                query = select(agents).where(agents.c.id.in_(chunk))
                for row in (await conn.execute(query)).mappings():
                    states[str(row["id"])] = self._verified_state(row)
        if forgets == self._forgets:
            self._store(states, started)
        return len(states)

    def _verified_state(self, row: RowMapping) -> str:
        """The row's state, or ``unverified`` (its seal does not verify, or it is older
        than a row this node admitted); logged when an agent turns unverified (not at
        every poll after that)."""
        cached = self._cache.get(str(row["id"]))
        quiet = cached is not None and cached[0] == UNVERIFIED
        if agent_admitted(self._sealer, row, quiet=quiet):
            return str(row["state"])
        return UNVERIFIED

    def _store(self, states: dict[str, str], started: float) -> None:
        if len(self._cache) + len(states) > _MAX_ENTRIES:
            self._cache.clear()
        for agent_id, state in states.items():
            cached = self._cache.get(agent_id)
            if cached is None or cached[1] <= started:
                self._cache[agent_id] = (state, started)

    def forget(self, agent_id: str) -> None:
        """Drop the agent's entry and its read in flight (its state just changed here)."""
        self._forgets += 1
        self._cache.pop(agent_id, None)
        self._reading.pop(agent_id, None)
