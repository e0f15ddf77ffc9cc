"""Sign-in through the configured OIDC provider (``users.oidc``, :mod:`tether.users.oidc`)::

    POST /v1/login/oidc                 start: the authorization URL, a poll id, the code
    GET  /v1/login/oidc/callback        where the provider sends the browser back: verifies,
                                        then asks the person at the browser to confirm
    POST /v1/login/oidc/confirm         the confirmation (a form of the callback's page)
    GET  /v1/login/oidc/poll/{id}       the CLI collects the personal token, once (?wait=N)

The callback answers a small HTML page and never the token: it names the user and the code
the terminal shows, with a button that confirms (the page may not be framed, and its form
carries a one-use secret); the CLI, holding the poll id, collects the token once confirmed.
Every completed or refused sign-in is audited (``user.login``).
"""

from __future__ import annotations

import html
from typing import Annotated, Any, Final
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from tether.api.adminauth import audit_admin
from tether.api.humans import users_of
from tether.api.problems import ProblemError
from tether.api.users import token_json, user_json
from tether.users.logins import user_code
from tether.users.oidc import LOGIN_TTL, OidcLogin, OidcLoginError

router = APIRouter(prefix="/v1/login/oidc", tags=["users"])

MAX_WAIT: Final = 60.0
_PAGE: Final = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Tether</title></head>"
    "<body><p>{message}</p></body></html>"
)
_CONFIRM: Final = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Tether</title></head><body>"
    "<p>Sign in to Tether as <b>{user}</b> for the terminal showing the code <b>{code}</b>?</p>"
    "<p>Confirm only if you just ran <code>tether login --oidc</code> yourself and your "
    "terminal shows this code.</p>"
    "<form method='post' action='{action}'>"
    "<input type='hidden' name='state' value='{state}'>"
    "<input type='hidden' name='confirm' value='{confirm}'>"
    "<button type='submit'>Confirm</button></form></body></html>"
)
# The pages may not be framed (a framed confirmation could be clicked unseen), cached or
# leak their address.
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
MAX_FORM: Final = 4096


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
    return {"authorization_url": url, "poll_id": poll_id, "expires_in": int(LOGIN_TTL),
            "user_code": user_code(poll_id)}  # fmt: skip


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
        verified = await login.callback(code, state)
    except OidcLoginError as refused:
        return await _refused(request, refused)
    page = _CONFIRM.format(
        user=html.escape(verified.user), code=html.escape(verified.code),
        action=html.escape(str(request.url_for("confirm_oidc_login")), quote=True),
        state=html.escape(state, quote=True), confirm=html.escape(verified.confirm, quote=True),
    )  # fmt: skip
    return HTMLResponse(page, headers=_HEADERS)


@router.post("/confirm", response_class=HTMLResponse, name="confirm_oidc_login")
async def confirm(request: Request) -> HTMLResponse:
    """The person at the browser confirms: the personal token is made for the poll."""
    login = _oidc(request)
    try:
        body = await request.body()
        form = parse_qs(body.decode("ascii"), max_num_fields=4) if len(body) <= MAX_FORM else {}
        state, secret = form.get("state", [""])[0], form.get("confirm", [""])[0]
        if not state or not secret:
            raise OidcLoginError("the confirmation is incomplete; start again")
        confirmed = await login.confirm(state, secret)
    except (OidcLoginError, UnicodeDecodeError, ValueError) as refused:
        problem = refused if isinstance(refused, OidcLoginError) else OidcLoginError(
            "the confirmation is malformed; start again"
        )  # fmt: skip
        return await _refused(request, problem)
    user = confirmed.user
    changes: dict[str, object] = {"created": confirmed.created}  # what the sign-in recorded
    if confirmed.roles_before is not None and confirmed.roles_before != user.roles:
        changes["roles_before"] = sorted(confirmed.roles_before)
    await audit_admin(request, actor=f"user:{user.id}", action="user.login", target="oidc",
                      outcome="success", groups=sorted(user.groups), roles=sorted(user.roles),
                      pat=confirmed.pat, **changes)  # fmt: skip
    message = (
        f"Signed in to Tether as {user.id}. You can close this page and return to the terminal."
    )
    return HTMLResponse(_PAGE.format(message=html.escape(message)), headers=_HEADERS)


async def _refused(request: Request, refused: OidcLoginError) -> HTMLResponse:
    await audit_admin(request, actor="anonymous", action="user.login", target="oidc",
                      outcome="denied", status=400, reason=str(refused))  # fmt: skip
    page = _PAGE.format(message=html.escape(f"Sign-in failed: {refused}"))
    return HTMLResponse(page, status_code=400, headers=_HEADERS)


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
