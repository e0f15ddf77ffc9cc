"""Shared liveness checks: the sessions of one token re-check it together, not one by one.

Every session re-checks its credential every :data:`~tether.proxy.pg.connection.LIVE_CHECK_SECONDS`
(revocation, agent disabled). A tool like pgbench or a connection pool opens many sessions
with one token; checking each on its own costs one store read per session whenever the
identity service's cache expires, and those reads (on the event loop that also moves every
statement) were most of the broker's CPU at eight sessions. :class:`LiveChecks` makes the
check single-flight per token: while one check of a token runs, the other sessions of that
token wait for its outcome, and an outcome is reused for ``fresh_for`` seconds.

Security decisions:

* **The same check, the same answer.** The outcome shared is the identity service's own
  ``check_live`` for that token (keyed by its ``jti`` and agent), an error included: a
  revoked token ends every session of it, each within ``fresh_for`` plus one check period
  of the revocation, as documented (within a second).
* **Failures are not cached as success**: an error raised by the check is what each
  waiting session receives; an outcome is never older than ``fresh_for``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from tether.identity.claims import Claims

FRESH_FOR: Final = 0.2
_REMEMBERED: Final = 10_000  # tokens whose last outcome is kept


class LiveChecks:
    """Single-flight ``check_live`` per token (see the module docstring)."""

    def __init__(
        self,
        check: Callable[[Claims], Awaitable[None]],
        *,
        fresh_for: float = FRESH_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._fresh_for = fresh_for
        self._clock = clock
        self._outcomes: dict[tuple[str, str], tuple[float, BaseException | None]] = {}
        self._running: dict[tuple[str, str], asyncio.Future[BaseException | None]] = {}

    async def check(self, claims: Claims) -> None:
        """Raise what ``check_live(claims)`` raises, from a check at most ``fresh_for`` old."""
        key = (claims.jti, claims.agent_id)
        outcome = self._outcomes.get(key)
        if outcome is not None and 0 <= self._clock() - outcome[0] < self._fresh_for:
            error = outcome[1]
        else:
            running = self._running.get(key)
            if running is None:
                running = asyncio.ensure_future(self._run(key, claims))
                self._running[key] = running
            error = await asyncio.shield(running)
        if error is not None:
            raise error

    async def _run(self, key: tuple[str, str], claims: Claims) -> BaseException | None:
        started = self._clock()
        try:
            await self._check(claims)
            error: BaseException | None = None
        except Exception as failure:  # noqa: BLE001 - each waiting session re-raises it
            error = failure
        finally:
            self._running.pop(key, None)
        if len(self._outcomes) >= _REMEMBERED:
            self._outcomes.clear()
        self._outcomes[key] = (started, error)
        return error
