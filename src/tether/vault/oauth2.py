"""OAuth 2.0 client credentials (RFC 6749 section 4.4) for targets that want a bearer token.

Tether, not the agent, is the OAuth client: it asks the target's token endpoint for an
access token with the client secret held in the vault, caches the token, and injects it as
``Authorization: Bearer``. The agent never sees the client secret nor the token.

Security decisions:

* **Refreshed before expiry**: a cached token is used only while more than
  ``refresh_margin`` of its life (at least ``min_margin`` seconds) remains; a token without
  ``expires_in`` is used for ``default_lifetime`` seconds at most.
* **Single flight**: concurrent requests that find no usable token wait for one fetch, so a
  burst of traffic cannot hammer the token endpoint (nor trip its rate limit). The fetch is
  a task of its own: the agent whose request started it cannot cancel it for the others by
  hanging up.
* **A refusal drops the token, not the endpoint's quota**: a 401 from the target drops the
  token it refused, so the next request fetches a new one; a token fetched that way and
  refused again within ``refusal_backoff`` seconds is kept. Otherwise an agent allowed one
  path that always answers 401 (a scope the client lacks) made one token request per
  request of its own: identity providers rate-limit, and bill, client-credentials grants,
  and every other agent of the target then failed with the endpoint's refusals.
* **Keyed by the secret's value** (its SHA-256) as well as endpoint, client, scope and
  audience, so a rotated client secret is used by the next fetch, and a token fetched with
  the old secret is not served after the rotation.
* **Failures are never cached** and never carry the endpoint's response body into errors
  (it may echo the secret): :class:`OAuth2Error` names the status or the missing field only.
* **The endpoint is not trusted with this process's resources**: its answer is read as a
  stream and refused past ``MAX_RESPONSE_BYTES`` (a declared larger ``Content-Length`` is
  refused unread), the whole exchange has one deadline (``timeout``; a trickling answer
  cannot hold every request of the target waiting on the single flight), a coded answer
  (asked for ``identity``, sent ``gzip`` or ``deflate`` anyway) is decoded here up to the
  same limit (httpx decoded any chain of codings whole: 590 bytes of ``gzip, gzip`` were
  256 MiB in memory before the limit was looked at), and a lifetime is
  a finite ``expires_in`` > 0, capped at ``MAX_LIFETIME`` seconds (``1e999``, ``NaN`` and
  numbers too large for a float are refused or capped, never cached forever nor crashing).
  An access token is visible ASCII (RFC 6750 ``b64token`` and its usual relatives), sent as
  received, never re-encoded.
* **TLS**: the token endpoint is reached with the target's TLS settings (verification on,
  its CA bundle if any, else the system store); ``http://`` endpoints are allowed only on
  loopback addresses. It is reached directly: proxy variables and ``.netrc`` of the
  environment are ignored, so the client secret never takes a route the target's own
  requests would not.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import math
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, urlsplit

import httpx

from tether.httpbody import BodyError, read_bounded

MAX_RESPONSE_BYTES: Final = 65536
MAX_LIFETIME: Final = 86400.0  # a token is fetched anew at least daily, whatever it says
_TOKEN: Final = re.compile(r"[\x21-\x7e]{1,8192}")
_SECONDS: Final = re.compile(r"[0-9]{1,12}")


class OAuth2Error(Exception):
    """The token endpoint did not give a usable token (the broker answers 502)."""


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """One OAuth client of one target."""

    token_url: str
    client_id: str
    client_secret: bytes = field(repr=False)
    scope: str | None = None
    audience: str | None = None
    auth_method: str = "client_secret_basic"

    def key(self) -> tuple[str, str, str, str, str, str]:
        digest = hashlib.sha256(self.client_secret).hexdigest()
        scope, audience = self.scope or "", self.audience or ""
        return (self.token_url, self.client_id, scope, audience, self.auth_method, digest)


@dataclass(frozen=True, slots=True)
class _Cached:
    token: str = field(repr=False)
    refresh_at: float
    fetched_at: float = 0.0
    after_refusal: bool = False  # fetched because the target refused the token before it
    refused: bool = False  # the target refused it: due now, the next fetch follows a refusal


class OAuth2Tokens:
    """Cached client-credentials tokens, fetched once per expiry window."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_margin: float = 0.2,
        min_margin: float = 10.0,
        default_lifetime: float = 300.0,
        timeout: float = 10.0,
        refusal_backoff: float = 10.0,
    ) -> None:
        self._clock = clock
        self._margin, self._min_margin = refresh_margin, min_margin
        self._refusal_backoff = refusal_backoff
        self._default_lifetime, self._timeout = default_lifetime, timeout
        self._cache: dict[tuple[str, ...], _Cached] = {}
        self._inflight: dict[tuple[str, ...], asyncio.Future[str]] = {}
        self.fetches = 0  # how many times a token endpoint was asked (for tests, metrics)

    async def token(self, client: ClientCredentials, tls: ssl.SSLContext | None) -> str:
        """A valid access token for ``client``; fetched when none is cached or it is due.

        Cached per client *and* TLS settings: a token fetched over a connection that was not
        verified (a target's ``tls_verify: false``) is never served to a target that
        verifies, which would inject whatever token a man in the middle chose."""
        key = (*client.key(), _trust(tls))
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.token
        pending = self._inflight.get(key)
        if pending is None:
            # A task of its own, not the first requester's: an agent that hangs up while
            # the token is fetched cancels its own wait, never the others' token.
            pending = asyncio.ensure_future(self._fetch(client, tls, key))
            self._inflight[key] = pending
            pending.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(pending)

    def _landed(self, key: tuple[str, ...], done: asyncio.Future[str]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: the waiters re-raise it; nobody else logs it

    def forget(self, client: ClientCredentials, token: str) -> None:
        """Drop ``client``'s cached ``token`` (the target refused it). A newer token, fetched
        since by another request that the target refused too, stays: N requests refused at
        once make one fetch, not N, and none of them wipes what the first one fetched. A
        token fetched after a refusal is dropped again only once ``refusal_backoff`` seconds
        old: refused at once too, the refusal is not about the token (a path the client's
        scope does not cover), and fetching again would only spend the endpoint's quota."""
        prefix = client.key()
        now = self._clock()
        for key, cached in list(self._cache.items()):
            if key[: len(prefix)] != prefix or cached.refused:
                continue
            if not hmac.compare_digest(cached.token, token):
                continue
            if cached.after_refusal and now - cached.fetched_at < self._refusal_backoff:
                continue
            self._cache[key] = _Cached(cached.token, -math.inf, cached.fetched_at, refused=True)

    async def _fetch(
        self, client: ClientCredentials, tls: ssl.SSLContext | None, key: tuple[str, ...]
    ) -> str:
        _check_url(client.token_url)
        self.fetches += 1
        started = self._clock()
        previous = self._cache.get(key)
        after_refusal = previous is not None and previous.refused
        try:
            async with asyncio.timeout(self._timeout):
                status, content = await self._post(client, tls)
        except TimeoutError:
            raise OAuth2Error("token endpoint did not answer in time") from None
        except httpx.HTTPError as error:
            raise OAuth2Error(f"token endpoint unreachable: {type(error).__name__}") from None
        if status != 200:
            raise OAuth2Error(f"token endpoint answered {status}")
        token, expires_in = _parse(content)
        lifetime = self._default_lifetime if expires_in is None else expires_in
        refresh_in = lifetime - max(self._min_margin, lifetime * self._margin)
        now = self._clock()
        for old in [k for k, cached in self._cache.items() if cached.refresh_at <= now]:
            del self._cache[old]  # expired (or fetched with a rotated-out secret): unbounded else
        self._cache[key] = _Cached(token, started + max(0.0, refresh_in), started, after_refusal)
        return token

    async def _post(
        self, client: ClientCredentials, tls: ssl.SSLContext | None
    ) -> tuple[int, bytes]:
        """The status and, for a 200, the body (at most ``MAX_RESPONSE_BYTES``)."""
        form, headers = _request(client)
        # trust_env off: no HTTP(S)_PROXY, ALL_PROXY or .netrc from the environment, which
        # would send the client secret (in clear, to a loopback http endpoint) to a proxy or
        # add credentials; the token endpoint is reached directly, as targets are.
        verify = tls or ssl.create_default_context()  # the system store, as for targets
        async with (
            httpx.AsyncClient(verify=verify, timeout=self._timeout, trust_env=False) as http,
            http.stream("POST", client.token_url, data=form, headers=headers) as response,
        ):
            if response.status_code != 200:
                return response.status_code, b""
            try:
                return 200, await read_bounded(response, MAX_RESPONSE_BYTES)
            except BodyError as error:
                raise OAuth2Error(f"token response {_WORDING[str(error)]}") from None


# tether.httpbody's reasons, as this module has always worded them.
_WORDING: Final = {"too large": "too large",
                   "an unsupported Content-Encoding": "has an unsupported Content-Encoding",
                   "does not decode": "does not decode"}  # fmt: skip


def _trust(tls: ssl.SSLContext | None) -> str:
    """Which TLS settings a token was fetched with (the broker builds one context per
    setting and keeps it, so its id names the setting)."""
    return "system" if tls is None else f"context-{id(tls)}"


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return
        except ValueError:
            if parts.hostname == "localhost":
                return
    raise OAuth2Error("token_url must be https (http only on loopback)")


def _request(client: ClientCredentials) -> tuple[dict[str, str], dict[str, str]]:
    form = {"grant_type": "client_credentials"}
    if client.scope:
        form["scope"] = client.scope
    if client.audience:
        form["audience"] = client.audience
    try:
        secret = client.client_secret.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise OAuth2Error("the client secret is not UTF-8 text") from None
    # identity: a compressed answer could inflate far past what was read off the wire
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    if client.auth_method == "client_secret_post":
        form["client_id"], form["client_secret"] = client.client_id, secret
    else:  # RFC 6749 section 2.3.1: form-urlencode both parts, then Basic
        pair = f"{quote(client.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return form, headers


def _parse(content: bytes) -> tuple[str, float | None]:
    """The access token and its lifetime (seconds, capped) from a token response body."""
    if len(content) > MAX_RESPONSE_BYTES:
        raise OAuth2Error("token response too large")
    try:
        body = json.loads(content, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise OAuth2Error("token response is not JSON") from None
    if not isinstance(body, dict):
        raise OAuth2Error("token response is not a JSON object")
    token = body.get("access_token")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise OAuth2Error("token response has no usable access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise OAuth2Error("token response is not a bearer token")
    return token, _lifetime(body.get("expires_in"))


def _lifetime(expires_in: object) -> float | None:
    if expires_in is None:
        return None
    if isinstance(expires_in, str) and _SECONDS.fullmatch(expires_in):
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise OAuth2Error("token response has an invalid expires_in")
    if expires_in <= 0 or (isinstance(expires_in, float) and not math.isfinite(expires_in)):
        raise OAuth2Error("token response has an invalid expires_in")
    return float(min(expires_in, MAX_LIFETIME))  # min first: an int past 1e308 never floats


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")
