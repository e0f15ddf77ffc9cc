"""Exchange events, appended after the response and batched with the next decision.

The decision event of a request is committed before the request is forwarded (DESIGN
invariant 5); the ``http.exchange`` event can only be written once the response is over.
Appending it at once would make the next request's decision wait behind its commit: two
commits per request on the critical path. Instead the broker hands the event to
:class:`AuditLater`, which appends it together with the next decision (the audit writer
commits every waiting event in one transaction) or after ``delay`` seconds, whichever
comes first.

Security decisions: an exchange event is never dropped. It is appended within ``delay``
seconds (20 ms by default), and :meth:`AuditLater.close` appends and awaits every pending
one before the node closes its audit trail; a failed append is logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from tether.audit.log import AuditUnavailable

log = logging.getLogger(__name__)

DEFAULT_DELAY: Final = 0.02
Append = Callable[[], Coroutine[Any, Any, int]]


class AuditLater:
    """Pending event appends of one broker."""

    def __init__(self, delay: float = DEFAULT_DELAY) -> None:
        self._delay = delay
        self._pending: list[tuple[Append, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

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
            task = asyncio.get_running_loop().create_task(_append(append, what))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def close(self) -> None:
        """Append every pending event and wait for all of them."""
        self.flush()
        if self._running:
            await asyncio.gather(*self._running)


async def _append(append: Append, what: str) -> None:
    try:
        await append()
    except AuditUnavailable:
        log.error("audit trail unavailable: %s unrecorded", what)
