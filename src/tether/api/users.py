"""Users and personal API tokens over HTTP.

::

    POST   /v1/login                   password (+ TOTP code) -> a personal API token
    GET    /v1/me                      the signed-in user
    POST   /v1/tokens                  a new personal token for the signed-in user
    GET    /v1/tokens                  the signed-in user's tokens (admins: ?user=, ?all=true)
    DELETE /v1/tokens/{id}             revoke one (one's own; admins: any)
    POST   /v1/users                   admin: a new user (roles, groups, password)
    GET    /v1/users[/{id}]            admin
    PATCH  /v1/users/{id}              admin: replace roles and/or groups
    POST   /v1/users/{id}/password     admin: set the password (revokes personal tokens)
    POST   /v1/users/{id}/disable      admin: disable (revokes every personal token)
    POST   /v1/users/{id}/enable       admin
    POST   /v1/users/{id}/totp         admin: enrol TOTP (the secret is answered once)

Admin routes go through :func:`tether.api.adminauth.admin_call` (an admin token, or a
personal token whose user has the ``admin`` role), so each is audited with who did it.
A login is audited too, refused or not, and its refusal never says what was wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tether.api.adminauth import AdminCall, admin_call, audit_admin, peer_of, tether_state
from tether.api.bodies import body_schema, json_body
from tether.api.humans import bearer, signed_in, signed_in_person, signed_in_user, users_of
from tether.api.problems import ProblemError
from tether.users.service import (
    USER_ID,
    LoginRefused,
    LoginThrottled,
    UserError,
    UserService,
)
from tether.users.store import User, UserToken
from tether.users.totp import provisioning_uri

router = APIRouter(tags=["users"])
T = TypeVar("T")

Name = Annotated[str, Field(min_length=1, max_length=100)]
Password = Annotated[str, Field(min_length=1, max_length=1024)]
Groups = Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=100)]
Roles = Annotated[list[Annotated[str, Field(max_length=16)]], Field(max_length=3)]
Ttl = Annotated[int, Field(gt=0, le=365 * 86400)]


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: Name
    password: Password
    totp: Annotated[str, Field(max_length=10)] | None = None
    token_name: Annotated[str, Field(min_length=1, max_length=200)] = "login"  # noqa: S105
    ttl: Ttl | None = None


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    ttl: Ttl | None = None


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Name
    password: Password | None = None
    roles: Roles = Field(default_factory=list)
    groups: Groups = Field(default_factory=list)
    display_name: Annotated[str, Field(max_length=200)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: Roles | None = None
    groups: Groups | None = None


class PasswordSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: Password


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "display_name": user.display_name,
        "email": user.email,
        "source": user.source,
        "state": user.state,
        "roles": sorted(user.roles),
        "groups": sorted(user.groups),
        "totp": user.has_totp,
        "created_at": user.created_at.isoformat(),
    }


def token_json(token: UserToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "user": token.user_id,
        "name": token.name,
        "created_at": token.created_at.isoformat(),
        "expires_at": token.expires_at.isoformat(),
        "revoked": token.revoked_at is not None,
        "last_used_at": None if token.last_used_at is None else token.last_used_at.isoformat(),
    }


def _problem(error: UserError) -> ProblemError:
    return ProblemError(error.status, str(error))


# --- login and one's own tokens -----------------------------------------------------------


@router.post("/v1/login", status_code=201, openapi_extra=body_schema(LoginBody))
async def login(request: Request) -> dict[str, Any]:
    """Exchange a password (and TOTP code) for a personal API token, shown once."""
    body = await json_body(LoginBody)(request)
    users = users_of(request)
    try:
        user = await users.login(body.user, body.password, body.totp)
    except LoginRefused as refused:
        throttled = isinstance(refused, LoginThrottled)
        status = 429 if throttled else 401
        # The name is recorded only when it is a user's: a password typed as the name must
        # not reach the trail (the throttle keys by a digest of it for the same reason).
        known = USER_ID.fullmatch(body.user) and await users.find(body.user) is not None
        await audit_admin(request, actor="anonymous", action="user.login",
                          target=f"user:{body.user}" if known else "user:(unknown)",
                          outcome="denied", status=status, source=peer_of(request))  # fmt: skip
        if throttled:
            raise ProblemError(429, "too many failed sign-ins for this user; try again later",
                               headers={"Retry-After": "900"}) from None  # fmt: skip
        raise ProblemError(401, "wrong user, password or code") from None
    text, record = await _new_token(users, user.id, body.token_name, body.ttl)
    await audit_admin(request, actor=f"user:{user.id}", action="user.login",
                      target=f"user:{user.id}", outcome="success", pat=record.id)  # fmt: skip
    return {"token": text, **token_json(record), "user_info": user_json(user)}


async def _new_token(
    users: UserService, user_id: str, name: str, ttl: int | None
) -> tuple[str, UserToken]:
    try:
        return await users.create_token(user_id, name=name, ttl=ttl)
    except UserError as error:
        raise _problem(error) from None


@router.get("/v1/me")
async def me(request: Request) -> dict[str, Any]:
    """The signed-in user."""
    return user_json(await signed_in_user(request))


@router.post("/v1/tokens", status_code=201, openapi_extra=body_schema(TokenCreate))
async def create_token(request: Request) -> dict[str, Any]:
    """A new personal token for the signed-in user; its text is in this answer only. It
    expires no later than the token it is made with."""
    caller = await signed_in_person(request)
    user, presented = caller.user, caller.token
    assert user is not None and presented is not None
    body = await json_body(TokenCreate)(request)
    try:  # never outliving the token it is made with (an OIDC sign-in's token_ttl holds)
        text, record = await users_of(request).create_token(
            user.id, name=body.name, ttl=body.ttl, not_after=presented.expires_at
        )
    except UserError as error:
        raise _problem(error) from None
    await audit_admin(request, actor=f"user:{user.id}", action="token.create",
                      target=f"pat:{record.id}", outcome="success")  # fmt: skip
    return {"token": text, **token_json(record)}


@router.get("/v1/tokens")
async def list_tokens(
    request: Request, user: str | None = None, all: bool = False
) -> dict[str, Any]:
    """The caller's tokens; an admin may ask for another ``user``'s, or ``all``."""
    caller = await signed_in(request)
    own = caller.user.id if caller.user is not None else None
    is_admin = caller.user is None or "admin" in caller.user.roles
    if (user is not None and user != own) or all or own is None:
        if not is_admin:
            raise ProblemError(403, "only an admin lists other users' tokens")
        own = None if all else user
    tokens = await users_of(request).tokens(own)
    return {"tokens": [token_json(t) for t in tokens]}


@router.delete("/v1/tokens/{token_id}")
async def revoke_token(token_id: str, request: Request) -> dict[str, Any]:
    """Revoke a token: one's own, or any for an admin."""
    caller = await signed_in(request)
    only = None
    if caller.user is not None and "admin" not in caller.user.roles:
        only = caller.user.id
    done = await users_of(request).revoke_token(token_id, user_id=only)
    if not done:
        raise ProblemError(404, f"no live token {token_id!r}")
    await audit_admin(request, actor=caller.actor, action="token.revoke",
                      target=f"pat:{token_id}", outcome="success")  # fmt: skip
    return {"id": token_id, "revoked": True}


# --- administration -----------------------------------------------------------------------


@router.post("/v1/users", status_code=201, openapi_extra=body_schema(UserCreate))
async def create_user(
    call: Annotated[AdminCall, Depends(admin_call("user.create"))],
    body: Annotated[UserCreate, Depends(json_body(UserCreate))],
    request: Request,
) -> dict[str, Any]:
    """A new local user."""
    call.target = f"user:{body.id}"
    call.detail.update(roles=sorted(body.roles), groups=sorted(body.groups))
    try:
        user = await users_of(request).add(
            body.id, password=body.password, roles=body.roles, groups=body.groups,
            display_name=body.display_name, email=body.email,
        )  # fmt: skip
    except UserError as error:
        raise _problem(error) from None
    return user_json(user)


@router.get("/v1/users")
async def list_users(
    call: Annotated[AdminCall, Depends(admin_call("user.list"))], request: Request
) -> dict[str, Any]:
    call.target = "users"
    return {"users": [user_json(u) for u in await users_of(request).all()]}


@router.get("/v1/users/{user_id}")
async def show_user(
    user_id: str, call: Annotated[AdminCall, Depends(admin_call("user.show"))], request: Request
) -> dict[str, Any]:
    call.target = f"user:{user_id}"
    return user_json(await _guard(users_of(request).get(user_id)))


@router.patch("/v1/users/{user_id}", openapi_extra=body_schema(UserUpdate))
async def update_user(
    user_id: str,
    call: Annotated[AdminCall, Depends(admin_call("user.update"))],
    body: Annotated[UserUpdate, Depends(json_body(UserUpdate))],
    request: Request,
) -> dict[str, Any]:
    call.target = f"user:{user_id}"
    call.detail.update(body.model_dump(exclude_none=True))
    return user_json(
        await _guard(users_of(request).update(user_id, roles=body.roles, groups=body.groups))
    )


@router.post("/v1/users/{user_id}/password", openapi_extra=body_schema(PasswordSet))
async def set_password(
    user_id: str,
    call: Annotated[AdminCall, Depends(admin_call("user.password"))],
    body: Annotated[PasswordSet, Depends(json_body(PasswordSet))],
    request: Request,
) -> dict[str, Any]:
    """Set the password and revoke the user's personal tokens (but the caller's own, when
    an admin sets their own password with a personal token: the other ones end)."""
    call.target = f"user:{user_id}"
    own = call.actor == f"user:{user_id}"
    keep = bearer(request) if own else None
    revoked = await _guard(users_of(request).set_password(user_id, body.password, keep_token=keep))
    call.detail["sessions_revoked"] = revoked  # a key naming "token" would be redacted
    return {"id": user_id, "password": "set", "tokens_revoked": revoked}


@router.post("/v1/users/{user_id}/disable")
async def disable_user(
    user_id: str,
    call: Annotated[AdminCall, Depends(admin_call("user.disable"))],
    request: Request,
) -> dict[str, Any]:
    call.target = f"user:{user_id}"
    done = await _guard(users_of(request).disable_user(user_id, by=call.actor))
    call.detail["delegations_revoked"] = len(done.delegations)
    call.detail["grants_revoked"] = len(done.grants)
    if done.delegations:  # in force on this node before the answer, on the others within a poll
        await call.identity.refresh_revocations()
    approvals = tether_state(request).approvals
    if approvals is not None:  # the grants are revoked in the store already; audit them
        await approvals.on_approver_disabled(user_id, done.grants)
    return user_json(done.user)


@router.post("/v1/users/{user_id}/enable")
async def enable_user(
    user_id: str,
    call: Annotated[AdminCall, Depends(admin_call("user.enable"))],
    request: Request,
) -> dict[str, Any]:
    call.target = f"user:{user_id}"
    return user_json(await _guard(users_of(request).set_state(user_id, "active")))


@router.post("/v1/users/{user_id}/totp")
async def enroll_totp(
    user_id: str,
    call: Annotated[AdminCall, Depends(admin_call("user.totp"))],
    request: Request,
) -> dict[str, Any]:
    """Enrol (or re-enrol) TOTP; the secret and its otpauth URI are answered once."""
    call.target = f"user:{user_id}"
    secret = await _guard(users_of(request).enroll_totp(user_id))
    return {"id": user_id, "secret": secret, "uri": provisioning_uri(secret, user_id)}


async def _guard(pending: Awaitable[T]) -> T:
    try:
        return await pending
    except UserError as error:
        raise _problem(error) from None
