"""Exchange events, appended after the response and batched with the next decision.

The decision event of a request is committed before the request is forwarded (DESIGN
invariant 5); the ``http.exchange`` event can only be written once the response is over.
Appending it at once would make the next request's decision wait behind its commit: two
commits per request on the critical path. Instead the broker hands the event to
:class:`AuditLater`, which appends it together with the next decision (the audit writer
commits every waiting event in one transaction) or after ``delay`` seconds, whichever
comes first.

An append is a plain function that queues its event in the audit log and answers the
future of its commit (:meth:`tether.audit.log.AuditLog.submit`): no task per event (a
task cost the event loop two more steps of every brokered request).

Security decisions: an exchange event is never dropped. It is appended within ``delay``
seconds (20 ms by default), and :meth:`AuditLater.close` appends and awaits every pending
one before the node closes its audit trail; a failed append is logged as an error, and
never reaches the request whose decision flushed it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Final

from tether.audit.log import AuditUnavailable

log = logging.getLogger(__name__)

DEFAULT_DELAY: Final = 0.02
Append = Callable[[], asyncio.Future[Any]]


class AuditLater:
    """Pending event appends of one broker."""

    def __init__(self, delay: float = DEFAULT_DELAY) -> None:
        self._delay = delay
        self._pending: list[tuple[Append, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Future[Any]] = set()

    def add(self, append: Append, what: str) -> None:
        """Append ``append()`` soon; ``what`` names the event in an error message."""
        self._pending.append((append, what))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush(self) -> None:
        """Start every pending append now (called right before a decision is appended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for append, what in pending:
            try:
                committed = append()
            except AuditUnavailable:
                log.error("audit trail unavailable: %s unrecorded", what)
                continue
            except Exception:  # a bug building the event: logged, not the flusher's failure
                log.exception("audit event not built: %s unrecorded", what)
                continue
            self._running.add(committed)
            committed.add_done_callback(functools.partial(self._landed, what))

    async def close(self) -> None:
        """Append every pending event and wait for all of them."""
        self.flush()
        if self._running:
            await asyncio.wait(list(self._running))

    def _landed(self, what: str, committed: asyncio.Future[Any]) -> None:
        self._running.discard(committed)
        if committed.cancelled():
            log.error("audit append cancelled: %s unrecorded", what)
            return
        error = committed.exception()
        if isinstance(error, AuditUnavailable):
            log.error("audit trail unavailable: %s unrecorded", what)
        elif error is not None:
            log.error("audit append failed: %s unrecorded", what, exc_info=error)
