"""Who may vote, property-tested: only users the rule names, never the delegating user
(unless ``allow_self``), the owner only when the rule names ``owner`` (or ``allow_self``)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.approvals.helpers import fresh_cipher
from tether.approvals.model import AccessRequest
from tether.approvals.service import ApprovalService
from tether.policy import PolicySource, load_policies
from tether.users.store import User

NAMES = st.sampled_from(["ann", "bob", "cid", "dee"])
# An owner is free text and a delegating user the provider's claim: any case, any width.
WRITTEN = NAMES.flatmap(
    lambda n: st.sampled_from([n, n.upper(), n.title(), "".join(chr(ord(c) + 0xFEE0) for c in n)])
)
GROUPS = st.sampled_from(["sre", "fin", "ops"])
SPECS = st.one_of(
    st.just("owner"), NAMES.map(lambda n: f"user:{n}"), GROUPS.map(lambda g: f"group:{g}")
)
NOW = datetime(2026, 11, 29, tzinfo=UTC)
SERVICE = ApprovalService(
    None,  # type: ignore[arg-type]
    lambda: load_policies([PolicySource("a", "rules: []")]),
    fresh_cipher().sealer,
)


def request(
    approvers: list[str], owner: str | None, delegate: str | None, allow_self: bool
) -> AccessRequest:
    return AccessRequest(
        id="ar_x", agent_id="bot", runtime_id=None, task_id="T", delegation_user=delegate,
        owner=owner, target="t", kind="mcp", action={}, digest="0" * 64, rule_id="r",
        scope="action", required=1, approvers=tuple(approvers), allow_self=allow_self,
        valid_for=60, reason=None, status="pending", requested_at=NOW, expires_at=NOW,
        decided_at=None, decided_reason=None, revision=1,
    )  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    approvers=st.lists(SPECS, min_size=1, max_size=4),
    owner=st.none() | WRITTEN,
    delegate=st.none() | WRITTEN,
    allow_self=st.booleans(),
    name=NAMES,
    groups=st.frozensets(GROUPS, max_size=3),
    active=st.booleans(),
)
def test_only_named_users_vote_and_nobody_approves_their_own(
    approvers: list[str], owner: str | None, delegate: str | None, allow_self: bool,
    name: str, groups: frozenset[str], active: bool,
) -> None:  # fmt: skip
    user = User(name, None, None, "local", "active" if active else "disabled", frozenset(),
                groups, False, NOW)  # fmt: skip
    found = request(approvers, owner, delegate, allow_self)
    allowed = SERVICE.may_vote(found, user) is None
    owner_is = owner is not None and unicodedata.normalize("NFKC", owner).lower() == name
    delegate_is = delegate is not None and unicodedata.normalize("NFKC", delegate).lower() == name
    named = (
        f"user:{name}" in approvers
        or any(f"group:{g}" in approvers for g in groups)
        or ("owner" in approvers and owner_is)
    )
    if allowed:
        assert active and named
        if not allow_self:
            assert not delegate_is
            assert not owner_is or "owner" in approvers
    elif active and named and allow_self:
        raise AssertionError("a named, active user with allow_self must be able to vote")
