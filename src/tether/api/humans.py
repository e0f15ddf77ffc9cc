"""Signed-in humans on the API: personal API tokens, roles, and who is calling.

A personal API token (``Authorization: Bearer tpt_...``, :mod:`tether.users.service`)
makes the call act as its user: the audit trail names ``user:<id>``, never a shared
admin token. On the admin API (:mod:`tether.api.adminauth`) a personal token is accepted
when its user holds the role the action needs: ``admin`` for every admin action, or
``auditor`` for reading the audit trail (``audit.*``). Approval routes need a user (an
admin token may read requests, never vote: an approval is a human's decision).

Security decisions:

* A token that is not a personal token's shape, unknown, expired, revoked, or of a
  disabled user is not a user; the caller falls back to admin-token authentication,
  which answers 401 (audited as ``denied``).
* A valid user without the role is refused 403 and the refusal is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fastapi import Request

from tether.api.problems import ProblemError
from tether.api.state import AppState
from tether.identity.admintokens import find_admin_token
from tether.users.service import USER_TOKEN_PREFIX, UserService
from tether.users.store import User, UserToken

READ_ROLES: Final = {"audit": frozenset({"admin", "auditor"})}
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="tether"'}


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.tether
    return state


def users_of(request: Request) -> UserService:
    users = _state(request).users
    if users is None:
        raise ProblemError(503, "users are not configured on this node")
    return users


def bearer(request: Request) -> str | None:
    values = request.headers.getlist("authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def roles_for(action: str) -> frozenset[str]:
    """The roles any of which lets a user do admin ``action``."""
    return READ_ROLES.get(action.split(".", 1)[0], frozenset({"admin"}))


async def personal_token_actor(request: Request, action: str) -> str | None:
    """``user:<id>`` when the call carries a personal token whose user may do ``action``;
    None when it carries no usable personal token; a 403 problem (audited) otherwise."""
    presented = bearer(request)
    users = _state(request).users
    if presented is None or users is None or not presented.startswith(USER_TOKEN_PREFIX):
        return None
    user = await users.authenticate(presented)
    if user is None:
        return None
    actor = f"user:{user.id}"
    if not user.roles & roles_for(action):
        # Imported here: adminauth imports this module.
        from tether.api.adminauth import audit_admin

        reason = f"the user lacks the role for {action}"
        await audit_admin(request, actor=actor, action=action, target=request.url.path,
                          outcome="refused", status=403, reason=reason)  # fmt: skip
        raise ProblemError(403, f"{user.id} may not {action}: needs role {_roles(action)}")
    return actor


def _roles(action: str) -> str:
    return " or ".join(sorted(roles_for(action)))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls a human route: a user, or an admin token (which may only read)."""

    actor: str
    user: User | None
    token: UserToken | None = None  # the personal token presented


async def signed_in(request: Request) -> Caller:
    """The calling user (personal token) or admin token; 401 otherwise."""
    presented = bearer(request)
    state = _state(request)
    if presented is not None and state.users is not None:
        found = await state.users.authenticate_token(presented)
        if found is not None:
            return Caller(f"user:{found[0].id}", found[0], found[1])
    if presented is not None and state.identity is not None:
        identity = state.identity
        token = await find_admin_token(
            identity.engine, identity.sealer, presented, now=identity.clock(),
            revoked=identity.revoked,
        )  # fmt: skip
        if token is not None:
            return Caller(f"admin-token:{token.id}", None)
    reason = "missing token" if presented is None else "unknown, expired or revoked token"
    raise ProblemError(401, f"sign in: {reason}", headers=_CHALLENGE)


async def signed_in_user(request: Request) -> User:
    """The calling user; an admin token is refused 403 (humans decide, not shared tokens)."""
    user = (await signed_in_person(request)).user
    assert user is not None  # signed_in_person refuses callers without one
    return user


async def signed_in_person(request: Request) -> Caller:
    """The calling user with the personal token presented; an admin token is refused 403."""
    caller = await signed_in(request)
    if caller.user is None or caller.token is None:
        raise ProblemError(403, "only a signed-in user may do this (use a personal token)")
    return caller
