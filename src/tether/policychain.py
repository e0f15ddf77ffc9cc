"""The decision for a delegation chain: every user of the chain, each with their own groups.

The policy contract (``shared/spec/policy.md``, section 4 step 8) has one ``delegation.user``
per request: "an agent acting for a user never gets more than either of them has". Tether
also issues delegation *chains* (RFC 8693 nested ``act``, :mod:`tether.identity.grants`):
alice delegates to the agent, and that delegated token is the actor of bob's delegation, so
the token's ``sub`` is bob and its ``act`` names alice, then the agent. The spec is silent on
chains; the engine stays exactly as specified, and this module (the front-ends' layer, used
through :func:`tether.proxy.core.decide` and the approval flow) decides the safe way.

Security decisions:

* **Every user of the chain is decided.** A chained request carries the chain's earlier
  users in ``delegation.chain`` (:func:`delegation_of`); :func:`decide` asks the engine once
  per user (``delegation`` set to that user and that user's own groups, everything else the
  same) and returns the most restrictive answer: deny over ``approval_required`` over allow.
  The outermost user (the token's ``sub``) is decided first, exactly as before; an earlier
  user refused is a deny ``delegation-denied`` whose detail names that user (as the engine's
  step 8 names the user it refused) and whose rule is the refusing rule, so the decision's
  audit event shows which user of the chain refused.
* **Fail closed for a missing piece.** The engine refuses a request holding
  ``delegation.chain`` (an unknown field is ``invalid-request``), so a caller that forgot
  this module denies rather than deciding for one user only. A malformed chain is a deny
  ``invalid-request``. The earlier users of a chained token issued before the token carried
  their groups (``act_groups``) are decided without groups (:attr:`Claims.delegation_users`):
  allowed less, never more.
* **Cost.** A request without ``delegation.chain`` (not delegated, or delegated by one user)
  goes to the engine unchanged, once.
* **Approvals.** Held approvals (``approvals``, rule ids) count the same for every user's
  decision: an approval lets a rule that needs one allow, it never lifts a deny, and every
  user's own rules still apply. A grant is bound to the outermost user, as for a single
  delegation (:func:`tether.approvals.binding.delegation_user`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from tether.identity.claims import MAX_ACTOR_DEPTH
from tether.policy.model import (
    DELEGATION_DENIED,
    DENY,
    INVALID_REQUEST,
    Decision,
    more_restrictive,
)

if TYPE_CHECKING:
    from tether.identity.claims import Claims
    from tether.policy import PolicySet

CHAIN: Final = "chain"  # in a request's ``delegation``: the chain's earlier users, outermost first


def delegation_of(claims: Claims) -> dict[str, Any] | None:
    """The request's ``delegation`` for ``claims`` (None when not delegated): the user the
    agent acts for (``sub``) with their groups and, for a chain, ``chain``: every earlier
    user with their own groups, outermost first."""
    if claims.agent is None:
        return None
    delegation: dict[str, Any] = {"user": claims.sub, "groups": list(claims.groups)}
    act = claims.act
    if act is not None and act.act is not None:  # the actor is itself a delegation: a chain
        delegation[CHAIN] = [
            {"user": user.sub, "groups": list(user.groups)} for user in claims.delegation_users[1:]
        ]
    return delegation


def single(request: Mapping[str, Any]) -> Mapping[str, Any]:
    """``request`` as the engine reads it for its outermost user (the chain left out)."""
    delegation = request.get("delegation")
    if type(delegation) is not dict or CHAIN not in delegation:
        return request
    outermost = {k: v for k, v in delegation.items() if k != CHAIN}
    return {**request, "delegation": outermost}


def decide(
    policies: PolicySet, request: Mapping[str, Any], *, default_schema: str = "public"
) -> Decision:
    """The decision of ``policies`` for ``request``, for every user of its delegation
    chain (see the module docstring). Never raises."""
    delegation = request.get("delegation")
    if type(delegation) is not dict or CHAIN not in delegation:
        return policies.decide(request, default_schema=default_schema)
    users = _users(delegation)
    if users is None:
        detail = f"delegation.chain must list 1 to {MAX_ACTOR_DEPTH} {{user, groups}} objects"
        return Decision(DENY, None, INVALID_REQUEST, detail, policies.version)
    result: Decision | None = None
    for index, user in enumerate(users):
        decision = policies.decide({**request, "delegation": user}, default_schema=default_schema)
        if decision.decision == DENY:
            return decision if index == 0 else _refused_by(user["user"], decision)
        result = decision if result is None else more_restrictive(result, decision)
    assert result is not None  # the outermost user is always there
    return result


def _users(delegation: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The chain's users, the outermost first, each ``{"user", "groups"}``; None if malformed
    (the engine checks each user's fields again)."""
    chain = delegation.get(CHAIN)
    if type(chain) is not list or not chain or len(chain) > MAX_ACTOR_DEPTH:
        return None
    users = [{k: v for k, v in delegation.items() if k != CHAIN}]
    for entry in chain:
        if type(entry) is not dict or not entry.keys() <= {"user", "groups"}:
            return None
        if type(entry.get("user")) is not str:
            return None
        users.append(entry)
    return users


def _refused_by(user: str, decision: Decision) -> Decision:
    """An earlier user's deny, as the engine's step 8 words a refused user."""
    if decision.reason == DELEGATION_DENIED:
        return decision  # the engine's own detail names the user
    why = decision.reason if decision.detail is None else f"{decision.reason}: {decision.detail}"
    detail = f"user {user!r} of the delegation chain is not allowed this action ({why})"
    return Decision(DENY, decision.rule, DELEGATION_DENIED, detail, decision.policy_version)
