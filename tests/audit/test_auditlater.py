"""AuditLater (exchange events appended with the next decision): every event lands in the
trail, with no task of its own, and a failure is logged without reaching the request whose
decision flushed it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.audit.conftest import AGENT, Trail
from tests.audit.test_emit import stored
from tether.audit.log import AuditUnavailable
from tether.proxy.http.auditlater import AuditLater


def exchange(trail: Trail, path: str) -> asyncio.Future[tuple[int, str, str]]:
    auditor = trail.auditor
    return auditor.log.submit(
        auditor.http_exchange_event(AGENT, target="api", method="GET", path=path, status=200)
    )


async def test_pending_events_land_in_the_trail_on_flush_and_close(trail: Trail) -> None:
    later = AuditLater(delay=60.0)  # only a flush or the close appends them
    later.add(lambda: exchange(trail, "/a"), "exchange a")
    later.add(lambda: exchange(trail, "/b"), "exchange b")
    tasks = len(asyncio.all_tasks())
    later.flush()
    assert len(asyncio.all_tasks()) == tasks  # queued in the log: no task per event
    later.add(lambda: exchange(trail, "/c"), "exchange c")
    await later.close()  # the pending one too, and every commit awaited
    paths = [(await stored(trail, seq)).action["path"] for seq in (1, 2, 3)]
    assert paths == ["/a", "/b", "/c"]


async def test_the_timer_appends_without_a_decision(trail: Trail) -> None:
    later = AuditLater(delay=0.01)
    later.add(lambda: exchange(trail, "/timed"), "exchange timed")
    for _ in range(200):
        await asyncio.sleep(0.01)
        if trail.auditor.log.batches:
            break
    assert (await stored(trail, 1)).action["path"] == "/timed"


async def test_a_failed_append_is_logged_and_not_raised_to_the_flusher(
    trail: Trail, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable() -> asyncio.Future[tuple[int, str, str]]:
        raise AuditUnavailable("the audit log is not running")

    def broken() -> asyncio.Future[tuple[int, str, str]]:
        raise ValueError("a bug building the event")

    later = AuditLater(delay=60.0)
    later.add(unavailable, "exchange x on api")
    later.add(broken, "exchange y on api")
    later.add(lambda: exchange(trail, "/kept"), "exchange z on api")
    with caplog.at_level(logging.ERROR, logger="tether.proxy.http.auditlater"):
        later.flush()  # the decision that flushes them goes on
        await later.close()
    text = caplog.text
    assert "exchange x on api unrecorded" in text and "exchange y on api unrecorded" in text
    assert (await stored(trail, 1)).action["path"] == "/kept"


async def test_a_commit_that_fails_is_logged(
    trail: Trail, caplog: pytest.LogCaptureFixture
) -> None:
    failing: asyncio.Future[tuple[int, str, str]] = asyncio.get_running_loop().create_future()
    later = AuditLater(delay=60.0)
    later.add(lambda: failing, "exchange f on api")
    with caplog.at_level(logging.ERROR, logger="tether.proxy.http.auditlater"):
        later.flush()
        failing.set_exception(AuditUnavailable("audit trail unavailable: disk full"))
        await later.close()
    assert "exchange f on api unrecorded" in caplog.text
