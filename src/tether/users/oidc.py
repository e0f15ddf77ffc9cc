"""Sign-in through an OIDC provider: authorization code flow with PKCE (RFC 7636).

::

    CLI ──POST /v1/login/oidc──▶ Tether: state, nonce, PKCE verifier (in the database, 10 min)
     │       ◀── authorization URL + poll id
     └─ browser ──▶ provider (user signs in) ──▶ /v1/login/oidc/callback?code&state
                                   Tether: code + verifier ──▶ token endpoint ──▶ ID token
                                   verify ID token, map groups, personal token for the poll
    CLI ──GET /v1/login/oidc/poll/{id}──▶ the personal token, once

Security decisions:

* **PKCE S256 always**, a fresh 256-bit verifier per login; ``state`` (256 bits, one use,
  ``LOGIN_TTL``) binds the callback to a login Tether started, and ``nonce`` binds the
  ID token to it (a token minted for another login is refused).
* **Any node completes a sign-in**: pending sign-ins are rows of the shared database
  (:mod:`tether.users.logins`), keyed by digests of ``state`` and the poll id, their
  verifier and token sealed under keys derived from those secrets. The state is spent
  atomically before the code is exchanged, so a replayed callback fails on every node,
  and the token is collected once, by one poll.
* **The ID token is verified like every user token** (:func:`verify_user_token`: the
  issuer's keys from its JWKS, ``iss``, ``aud`` — the provider's configured audiences must
  include ``client_id`` —, expiry, algorithm allow-list); the user id and the groups come
  from that issuer's ``user_claim`` and ``groups_claim``.
* **Accounts do not change hands**: an id that is a local user is refused (a provider cannot
  take over a password account), a disabled user stays out, and an id Tether cannot use as
  a user id is refused, never rewritten.
* Groups and roles (``roles``: group -> roles) are replaced at every sign-in, so removing
  someone from a group at the provider removes the role at their next sign-in; existing
  personal tokens keep working until they expire (``token_ttl``) or are revoked.
* The token never reaches the browser; the poll id (256 bits, one use) is what the CLI
  holds.
* **Nobody signs in with someone else's browser.** Whoever holds a poll id gets the token of
  whoever completes its sign-in, and a provider with a live session completes it without a
  click: a link to the authorization URL would hand its visitor's token (an admin's, say) to
  whoever sent it. So the callback only verifies and asks the person at the browser to
  confirm, showing the user and the code the terminal that started the sign-in shows
  (:func:`tether.users.logins.user_code`); the token is made when they confirm
  (:meth:`OidcLogin.confirm`, a one-use secret that only the page holds, posted back from a
  page that may not be framed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlencode

import httpx

from tether.httpbody import ACCEPT_IDENTITY, read_bounded
from tether.identity.workload import TrustedIssuers, WorkloadTokenError, verify_user_token
from tether.users import logins
from tether.users import store as user_store
from tether.users.config import OidcLoginConfig
from tether.users.service import GROUP_NAME, USER_ID, UserError, UserService
from tether.users.store import User, UserToken

CALLBACK_PATH: Final = "/v1/login/oidc/callback"
LOGIN_TTL: Final = 600.0
MAX_PENDING: Final = 10_000
# An answer of the provider (discovery document, token): read within this, after decoding
# (tether.httpbody: httpx would decode a gzip bomb whole first).
MAX_ANSWER_BYTES: Final = 1 << 20
TIMEOUT: Final = 10.0
POLL_STEP: Final = 0.5  # seconds between database checks while a poll waits


class OidcLoginError(Exception):
    """A sign-in that cannot complete; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Verified:
    """A callback whose ID token checked out, waiting for the person at the browser to
    confirm: ``user`` the user id it verified (not yet recorded: nothing of the user changes
    before the confirmation), ``confirm`` the one-use secret the confirmation page posts
    back, ``code`` the code the terminal that started the sign-in shows."""

    user: str
    confirm: str
    code: str


@dataclass(frozen=True)
class Confirmed:
    """A confirmed sign-in: the user as recorded, and what the confirmation changed of it
    (``created``; its roles before, None for a new user) for the audit trail."""

    user: User
    created: bool
    roles_before: frozenset[str] | None
    pat: str  # the id of the personal token made


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A completed sign-in, as its poll collects it."""

    token: str
    record: UserToken
    user: User


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcLogin:
    """OIDC sign-ins: started, completed and collected through the shared database."""

    def __init__(
        self,
        config: OidcLoginConfig,
        issuers: Callable[[], TrustedIssuers],
        users: UserService,
        *,
        redirect_uri: str,
        clock: Callable[[], datetime],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config, self.issuers, self.users = config, issuers, users
        self.redirect_uri = config.redirect_uri or redirect_uri
        self.clock = clock
        self._transport = transport
        self._completed = asyncio.Event()  # rung when this node completes a sign-in
        self._endpoints: tuple[str, str] | None = None

    async def start(self) -> tuple[str, str]:
        """The authorization URL to open in a browser, and the poll id for the CLI (its
        code to show is :func:`tether.users.logins.user_code` of the poll id)."""
        authorize, _token = await self._discover()
        state = secrets.token_urlsafe(32)
        started = logins.Started(
            secrets.token_urlsafe(48), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        )
        now = self.clock()
        async with self.users.engine.begin() as conn:
            await logins.prune(conn, now)
            if await logins.live_count(conn, now) >= MAX_PENDING:
                raise OidcLoginError("too many sign-ins in progress; try again shortly")
            await logins.insert_login(conn, state, started, now, LOGIN_TTL)
        query = urlencode({
            "response_type": "code", "client_id": self.config.client_id,
            "redirect_uri": self.redirect_uri, "scope": " ".join(self.config.scopes),
            "state": state, "nonce": started.nonce,
            "code_challenge": pkce_challenge(started.verifier), "code_challenge_method": "S256",
        })  # fmt: skip
        separator = "&" if "?" in authorize else "?"
        return f"{authorize}{separator}{query}", started.poll_id

    async def callback(self, code: str, state: str) -> Verified:
        """Verify the sign-in of ``state`` with the provider's ``code`` (the state is spent
        first, whatever happens next); it then waits for :meth:`confirm`."""
        async with self.users.engine.begin() as conn:
            started = await logins.consume(conn, state, self.clock())
        if started is None:
            raise OidcLoginError("unknown or expired sign-in (state); start again")
        id_token = await self._exchange(code, started.verifier)
        try:
            identity = await verify_user_token(id_token, self.issuers(), self.clock())
        except WorkloadTokenError as error:
            raise OidcLoginError(f"the ID token is refused: {error}") from None
        if identity.claims.get("iss") != self.config.issuer:
            raise OidcLoginError("the ID token is from another issuer")
        if identity.claims.get("nonce") != started.nonce:
            raise OidcLoginError("the ID token is not for this sign-in (nonce)")
        await self._admissible(identity.user)  # refused now, before any confirmation
        secret = secrets.token_urlsafe(32)
        async with self.users.engine.begin() as conn:
            await logins.await_confirmation(
                conn, state, secret, started.poll_id, identity.user, identity.groups
            )
        return Verified(identity.user, secret, logins.user_code(started.poll_id))

    async def confirm(self, state: str, secret: str) -> Confirmed:
        """The person at the browser confirmed the sign-in of ``state``: the user is
        recorded with its groups and roles (created or updated only now), and the personal
        token is made and left for the poll. Once; ``OidcLoginError`` otherwise."""
        async with self.users.engine.begin() as conn:
            found = await logins.confirm(conn, state, secret, self.clock())
        if found is None:
            raise OidcLoginError("unknown, expired or already confirmed sign-in; start again")
        poll_id, user_id, groups = found
        before = await self.users.find(user_id)
        user = await self._upsert(user_id, groups)
        if not user.active:
            raise OidcLoginError(f"{user_id} is not an active user")
        text, record = await self.users.create_token(
            user.id, name="oidc login", ttl=self.config.token_ttl
        )
        async with self.users.engine.begin() as conn:
            await logins.complete(conn, poll_id, text, user.id, record.id,
                                  self.clock(), LOGIN_TTL)  # fmt: skip
        self._completed.set()
        self._completed = asyncio.Event()
        roles_before = None if before is None else before.roles
        return Confirmed(user, before is None, roles_before, record.id)

    async def poll(self, poll_id: str, wait: float) -> LoginResult | None:
        """The completed sign-in of ``poll_id`` (handed out once), or None while pending;
        ``KeyError`` for an unknown, expired or already collected poll id. A sign-in
        completed on another node is seen within :data:`POLL_STEP` seconds."""
        deadline = time.monotonic() + wait
        while True:
            async with self.users.engine.begin() as conn:
                ready = await logins.poll_state(conn, poll_id, self.clock())
                if ready is None:
                    raise KeyError(poll_id)
                collected = await logins.collect(conn, poll_id, self.clock()) if ready else None
            if ready:
                return await self._result(poll_id, collected)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            event = self._completed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, POLL_STEP))

    async def _result(self, poll_id: str, collected: logins.Collected | None) -> LoginResult:
        if collected is None:
            raise KeyError(poll_id)  # another poll collected it first
        async with self.users.engine.connect() as conn:
            user = await user_store.get_user(conn, self.users.sealer, collected.user_id)
            tokens = await user_store.list_tokens(conn, collected.user_id)
        record = next((t for t in tokens if t.id == collected.token_id), None)
        if user is None or record is None:
            raise KeyError(poll_id)
        return LoginResult(collected.token, record, user)

    async def _discover(self) -> tuple[str, str]:
        if self._endpoints is not None:
            return self._endpoints
        config = self.config
        if config.authorization_endpoint is not None and config.token_endpoint is not None:
            self._endpoints = (config.authorization_endpoint, config.token_endpoint)
            return self._endpoints
        url = config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        authorize = config.authorization_endpoint or document.get("authorization_endpoint")
        token = config.token_endpoint or document.get("token_endpoint")
        if (
            document.get("issuer") != config.issuer
            or not isinstance(authorize, str)
            or not (isinstance(token, str))
        ):
            raise OidcLoginError("the provider's discovery document does not fit its issuer")
        self._endpoints = (authorize, token)
        return self._endpoints

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with (
                httpx.AsyncClient(transport=self._transport, timeout=TIMEOUT) as http,
                http.stream("GET", url, headers=ACCEPT_IDENTITY) as answer,
            ):
                data = await _json_answer(answer)
        except (httpx.HTTPError, ValueError):  # BodyError is a ValueError
            data = None
        if not isinstance(data, dict):
            raise OidcLoginError("the OIDC provider cannot be reached or answered nonsense")
        return data

    async def _exchange(self, code: str, verifier: str) -> str:
        _authorize, token_url = await self._discover()
        form = {
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
            "client_id": self.config.client_id, "code_verifier": verifier,
        }  # fmt: skip
        try:
            secret = self.config.secret()
        except ValueError as error:
            raise OidcLoginError(str(error)) from None
        auth = None if secret is None else httpx.BasicAuth(self.config.client_id, secret)
        try:
            async with (
                httpx.AsyncClient(transport=self._transport, timeout=TIMEOUT, auth=auth) as http,
                http.stream("POST", token_url, data=form, headers=ACCEPT_IDENTITY) as answer,
            ):
                data = await _json_answer(answer)
        except (httpx.HTTPError, ValueError):  # BodyError is a ValueError
            data = None
        id_token = data.get("id_token") if isinstance(data, dict) else None
        if not isinstance(id_token, str):
            raise OidcLoginError("the provider refused the authorization code")
        return id_token

    async def _admissible(self, user_id: str) -> None:
        """Refuse a user id Tether cannot record, a local user's, or a disabled user's."""
        if not USER_ID.fullmatch(user_id):
            raise OidcLoginError(
                f"the provider's user id {user_id[:100]!r} is not a Tether user id"
            )
        existing = await self.users.find(user_id)
        if existing is not None and existing.source != "oidc":
            raise OidcLoginError(f"{user_id} is a local user; sign in with a password")
        if existing is not None and not existing.active:
            raise OidcLoginError(f"{user_id} is disabled")

    async def _upsert(self, user_id: str, groups: tuple[str, ...]) -> User:
        await self._admissible(user_id)  # again: it may have changed since the callback
        roles = sorted({r for g in groups for r in self.config.roles.get(g, [])})
        # A provider's group Tether cannot name (``Domain Users``) is left out: a group only
        # ever adds (an approver entry, a role), so leaving one out never widens anything.
        kept = [g for g in groups if GROUP_NAME.fullmatch(g)]
        try:
            existing = await self.users.find(user_id)
            if existing is None:
                return await self.users.add(user_id, password=None, roles=roles, groups=kept,
                                            source="oidc")  # fmt: skip
            if existing.source != "oidc":
                raise OidcLoginError(f"{user_id} is a local user; sign in with a password")
            if not existing.active:
                raise OidcLoginError(f"{user_id} is disabled")
            return await self.users.update(user_id, roles=roles, groups=kept)
        except UserError as error:  # e.g. two first sign-ins of one user racing
            raise OidcLoginError(f"the user {user_id} cannot be recorded: {error}") from None


async def _json_answer(answer: httpx.Response) -> Any:
    """A successful answer's JSON (read within :data:`MAX_ANSWER_BYTES`), else None."""
    if not answer.is_success:
        return None
    return json.loads(await read_bounded(answer, MAX_ANSWER_BYTES))
