"""Admin API: search, follow and verify the audit trail.

``GET /v1/audit/events`` answers the events matching its filters (the same as
``tether audit search``) in ``seq`` order, and ``last_seq``, the cursor to pass as
``after_seq`` next time. With ``after_seq`` and ``wait`` (seconds, at most 60) it is a long
poll: when nothing matches yet it waits for new events before answering, which is how
``tether audit tail -f --server`` follows the trail without hammering the database.
``GET /v1/audit/verify`` runs :func:`tether.audit.verify.verify_trail` (with this node's
head file, :mod:`tether.audit.head`) and answers its report (``ok`` false when tampering
was found; the status is 200 either way, since the verification itself succeeded).

Both take the admin bearer token through :func:`tether.api.adminauth.admin_call`, which
records every call (actions ``audit.search`` and ``audit.verify``) like any admin call, with
one exception: a follow poll (``after_seq`` given) whose answer holds nothing but earlier
``audit.search`` events, or nothing, is not recorded when it succeeds. Otherwise a follower
(``tether audit tail -f --server``) would read its own previous poll's event on every poll
and feed on itself; any poll that returns another event, and every refusal, is recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.api.adminauth import AdminCall, admin_call, tether_state
from tether.api.problems import ProblemError
from tether.audit.canonical import event_json
from tether.audit.events import KINDS, AuditEvent
from tether.audit.store import EventFilter, follow, search_events
from tether.audit.timespec import TimeSpecError, parse_time_spec
from tether.audit.verify import verify_trail

router = APIRouter(tags=["audit"])
T = TypeVar("T")

MAX_LIMIT: Final = 10_000
MAX_WAIT: Final = 60.0
POLL_SECONDS: Final = 0.25

Filter = Annotated[str | None, Query(max_length=512)]


def _engine(request: Request) -> AsyncEngine:
    store = tether_state(request).store
    if store is None:
        raise ProblemError(503, "this node has no store")
    return store.engine


def _time(value: str | None, name: str, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time_spec(value, now)
    except TimeSpecError as error:
        raise ProblemError(400, f"{name}: {error}") from None


@router.get("/v1/audit/events")
async def events(
    call: Annotated[AdminCall, Depends(admin_call("audit.search"))],
    request: Request,
    agent: Filter = None,
    runtime: Filter = None,
    task: Filter = None,
    user: Filter = None,
    target: Filter = None,
    kind: Filter = None,
    decision: Filter = None,
    session: Filter = None,
    since: Filter = None,
    until: Filter = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    after_seq: Annotated[int | None, Query(ge=0)] = None,
    before_seq: Annotated[int | None, Query(ge=1)] = None,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
) -> dict[str, Any]:
    """Events matching every filter given (``*`` in a filter matches any run of
    characters); ``since``/``until`` take RFC 3339, a date, or ``15m``/``2h``/``1d``.
    Without ``after_seq``, the newest ``limit`` matches; with it, the first ``limit``
    after it."""
    call.target = "audit-trail"
    if kind is not None and "*" not in kind and kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        raise ProblemError(400, f"kind: unknown kind {kind!r}; one of {known}")
    now = datetime.now(UTC)
    where = EventFilter(
        agent=agent, runtime=runtime, task=task, user=user, target=target, kind=kind,
        decision=decision, session_id=session, since=_time(since, "since", now),
        until=_time(until, "until", now),
    )  # fmt: skip
    engine = _engine(request)
    if after_seq is None:
        found = await _read(
            engine, lambda conn: search_events(conn, where, limit=limit, before_seq=before_seq)
        )
        return _page(found, found[-1].seq if found else None)
    deadline = time.monotonic() + wait
    cursor = after_seq
    while True:
        found, cursor = await _read(
            engine, partial(follow, where=where, after_seq=cursor, limit=limit)
        )
        if found or time.monotonic() >= deadline or await request.is_disconnected():
            call.audited = not all(_is_search_audit(e) for e in found)
            return _page(found, cursor)
        await asyncio.sleep(POLL_SECONDS)


def _is_search_audit(event: AuditEvent) -> bool:
    return event.kind == "admin.change" and event.action.get("name") == "audit.search"


def _page(found: list[AuditEvent], last_seq: int | None) -> dict[str, Any]:
    return {"events": [event_json(e) for e in found], "last_seq": last_seq}


async def _read(engine: AsyncEngine, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    try:
        async with engine.connect() as conn:
            return await query(conn)
    except SQLAlchemyError as error:
        detail = f"the audit trail cannot be read: {type(error).__name__}"
        raise ProblemError(503, detail) from None


@router.get("/v1/audit/verify")
async def verify(
    call: Annotated[AdminCall, Depends(admin_call("audit.verify"))], request: Request
) -> dict[str, Any]:
    """Recompute the hash chain and check the signed checkpoints; the report says where
    anything was changed, deleted, inserted, reordered or truncated."""
    call.target = "audit-trail"
    state = tether_state(request)
    auditor, identity = state.auditor, state.identity
    head_file = None if auditor is None else auditor.log.head_file
    cipher = None if identity is None else identity.cipher  # only keys it sealed count
    report = await _read(
        _engine(request), partial(verify_trail, head_file=head_file, cipher=cipher)
    )
    call.detail["ok"] = report.ok
    return report.to_dict()
