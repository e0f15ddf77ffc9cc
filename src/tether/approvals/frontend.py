"""What a front-end needs to turn ``approval_required`` into its protocol's refusal.

A front-end decides through :meth:`ApprovalService.decide
<tether.approvals.service.ApprovalService.decide>`; on ``approval_required`` it holds the
access request and refuses with these helpers (HTTP: a 403 problem with
:func:`problem_members` and ``Retry-After``; SSH: :func:`refusal_line` on standard error;
PostgreSQL: :func:`~tether.approvals.binding.pending_detail` as the ``ErrorResponse`` detail,
see :mod:`tether.proxy.pg.approvals`). An HTTP agent may ask to
wait instead with ``Prefer: wait=N`` (RFC 7240); :func:`prefer_wait` reads it, bounded by
``MAX_WAIT``, and :func:`wait_decided` waits for the decision, after which the front-end
decides again (the grant is then held, or the request was denied).

Security decisions: waiting never allows anything by itself — the front-end must decide
again after the wait, so a denied, cancelled or expired request stays refused; and the
reason an agent gives (``X-Tether-Reason``, at most 500 characters) is only shown to the
approvers, never used by a decision.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any, Final

from tether.approvals.binding import pending_detail, status_path
from tether.approvals.model import AccessRequest
from tether.approvals.service import ApprovalService
from tether.policy import Decision

MAX_WAIT: Final = 60.0
RETRY_AFTER: Final = 5
REASON_HEADER: Final = "x-tether-reason"
_WAIT: Final = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d{1,6})(?:\s*(?:[;,]|$))", re.IGNORECASE)


def refusal_line(decision: Decision, pending: AccessRequest | None) -> str:
    """One line naming the rule, the access request, its status and where to follow it."""
    if pending is None:
        return f"Tether: approval required by rule {decision.rule} (no access request: no task)"
    return f"Tether: approval required by rule {pending.rule_id}: {pending_detail(pending)}"


def problem_members(pending: AccessRequest, base_url: str = "") -> dict[str, Any]:
    """RFC 9457 extension members of the HTTP refusal."""
    return {
        "access_request": pending.id,
        "access_request_status": pending.status,
        "status_url": base_url.rstrip("/") + status_path(pending.id),
        "rule": pending.rule_id,
    }


def prefer_wait(values: Iterable[str]) -> float:
    """The ``wait`` preference of ``Prefer`` header values, in seconds, at most ``MAX_WAIT``;
    0 when absent or malformed."""
    for value in values:
        match = _WAIT.search(value)
        if match is not None:
            return min(float(int(match.group(1))), MAX_WAIT)
    return 0.0


def agent_reason(values: Iterable[str]) -> str | None:
    """The reason an agent gave (first header value), trimmed to 500 characters."""
    for value in values:
        text = value.strip()
        if text:
            return text[:500]
    return None


async def wait_decided(service: ApprovalService, request_id: str, seconds: float) -> AccessRequest:
    """The request once it is no longer pending, or as it is after ``seconds``."""
    deadline = time.monotonic() + min(seconds, MAX_WAIT)
    while True:
        found = await service.get(request_id)
        left = deadline - time.monotonic()
        if found.status != "pending" or left <= 0:
            return found
        await service.bell.wait(min(left, 1.0))
