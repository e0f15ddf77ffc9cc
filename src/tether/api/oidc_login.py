"""Sign-in through the configured OIDC provider (``users.oidc``, :mod:`tether.users.oidc`)::

    POST /v1/login/oidc                 start: the authorization URL and a poll id
    GET  /v1/login/oidc/callback        where the provider sends the browser back
    GET  /v1/login/oidc/poll/{id}       the CLI collects the personal token, once (?wait=N)

The callback answers a small HTML page and never the token; the CLI, holding the poll id,
collects it. Every completed or refused sign-in is audited (``user.login``).
"""

from __future__ import annotations

import html
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from tether.api.adminauth import audit_admin
from tether.api.humans import users_of
from tether.api.problems import ProblemError
from tether.api.users import token_json, user_json
from tether.users.oidc import LOGIN_TTL, OidcLogin, OidcLoginError

router = APIRouter(prefix="/v1/login/oidc", tags=["users"])

MAX_WAIT: Final = 60.0
_PAGE: Final = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Tether</title></head>"
    "<body><p>{message}</p></body></html>"
)


def _oidc(request: Request) -> OidcLogin:
    login = users_of(request).oidc
    if login is None:
        raise ProblemError(404, "OIDC sign-in is not configured on this node")
    return login


@router.post("", status_code=201)
async def start(request: Request) -> dict[str, Any]:
    """Start a sign-in: open ``authorization_url`` in a browser, then poll with ``poll_id``."""
    try:
        url, poll_id = await _oidc(request).start()
    except OidcLoginError as error:
        raise ProblemError(503, str(error)) from None
    return {"authorization_url": url, "poll_id": poll_id, "expires_in": int(LOGIN_TTL)}


@router.get("/callback", response_class=HTMLResponse)
async def callback(
    request: Request,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    """The provider's redirect: completes the sign-in the ``state`` names."""
    login = _oidc(request)
    try:
        if error is not None or code is None or state is None:
            raise OidcLoginError(f"the provider refused the sign-in ({error or 'no code'})")
        user = await login.callback(code, state)
    except OidcLoginError as refused:
        await audit_admin(request, actor="anonymous", action="user.login", target="oidc",
                          outcome="denied", status=400, reason=str(refused))  # fmt: skip
        page = _PAGE.format(message=html.escape(f"Sign-in failed: {refused}"))
        return HTMLResponse(page, status_code=400)
    await audit_admin(request, actor=f"user:{user.id}", action="user.login", target="oidc",
                      outcome="success", groups=sorted(user.groups))  # fmt: skip
    message = (
        f"Signed in to Tether as {user.id}. You can close this page and return to the terminal."
    )
    return HTMLResponse(_PAGE.format(message=html.escape(message)))


@router.get("/poll/{poll_id}")
async def poll(
    poll_id: str,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
) -> JSONResponse:
    """``200`` with the personal token once the sign-in completed (only once), ``202``
    while it has not, ``404`` for an unknown, expired or already collected poll id."""
    try:
        result = await _oidc(request).poll(poll_id, wait)
    except KeyError:
        raise ProblemError(404, "unknown, expired or already collected sign-in") from None
    if result is None:
        return JSONResponse({"status": "pending"}, status_code=202)
    body = {"token": result.token, **token_json(result.record), "user_info": user_json(result.user)}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
