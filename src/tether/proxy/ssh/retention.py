"""The node's own retention of SSH recordings (``ssh.recording.retention``).

With a retention set, the broker removes, at its start and then every hour, the days of
recordings that ended that long ago (:mod:`tether.audit.recordings_prune`, the same rules as
``tether sessions prune``: whole days, a session still being written kept, links never
followed). The retention is at least a day (checked at load). The audit trail keeps the
sessions' events. What each pass removed, kept or failed to remove is logged.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from tether.audit.recordings_prune import PruneRefused, Removed, plan, remove

PRUNE_EVERY: Final = 3600.0

log = logging.getLogger(__name__)


async def keep_recordings(root: Path, retention: int, every: float = PRUNE_EVERY) -> None:
    """Prune ``root`` now, then every ``every`` seconds, until cancelled."""
    while True:
        try:
            await asyncio.to_thread(prune_once, root, retention)
        except Exception:  # a bug: logged, and the next pass tries again
            log.exception("recordings: the retention pass failed")
        await asyncio.sleep(every)


def prune_once(root: Path, retention: int, now: datetime | None = None) -> list[Removed]:
    """One pass: the days of ``root`` that ended ``retention`` seconds before ``now``."""
    now = now or datetime.now(UTC)
    if not root.is_dir():
        return []
    cutoff = now - timedelta(seconds=retention)
    try:
        days = plan(root, cutoff, now)
    except PruneRefused as error:  # a retention under a day is refused at load
        log.error("recordings: retention pass refused: %s", error)
        return []
    done = remove(root, days)
    gone = [r.day for r in done if r.error is None]
    if gone:
        log.info(
            "recordings: removed %d day(s) that ended before %s (ssh.recording.retention): "
            "%d session(s), %d bytes", len(gone), cutoff.isoformat(timespec="seconds"),
            sum(d.sessions for d in gone), sum(d.bytes for d in gone),
        )  # fmt: skip
    for day in days:
        if day.kept is not None:
            log.info("recordings: day %s kept: %s", day.day.isoformat(), day.kept)
    for removed in done:
        if removed.error is not None:
            log.warning("recordings: day %s not removed: %s", removed.day.day.isoformat(),
                        removed.error)  # fmt: skip
    return done
