"""The credential an HTTP target gets on every forwarded request, built from the vault.

:func:`injection_for` reads the secret named by the target's credential
(:mod:`tether.vault.target_specs`) and returns an :class:`Injection`: headers to add, a
query parameter to add, and the values that must never reach the agent.

Security decisions:

* **Read per request, from the store's short cache**: a rotated secret is used by the next
  request on this node (``SecretStore`` invalidates at once on ``put``), within the cache
  TTL on other nodes; nothing is kept here.
* **Values are checked before use**: a secret holding CR, LF, NUL or another control
  character, or bytes that are not valid in a header, is refused (:class:`InjectionError`)
  rather than sent, so a bad secret cannot split or smuggle a request.
* **The agent cannot shadow the credential**: the injected header names are returned so
  the broker drops the agent's headers of those names, and the agent's own occurrences of
  a query credential's parameter are removed before Tether's is appended.
* **Errors never carry values**: an :class:`InjectionError` names the secret and the
  problem, never a byte of the secret. A secret that cannot be decrypted (its ciphertext
  altered or copied from another row, or written under another master key) is an
  :class:`InjectionError` too, so the broker answers 502 and audits why, like any other
  unusable credential.
"""

from __future__ import annotations

import base64
import re
import ssl
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote, unquote

from tether.vault.oauth2 import ClientCredentials, OAuth2Error, OAuth2Tokens
from tether.vault.secrets import SecretError, SecretNotFound
from tether.vault.target_specs import (
    BasicCredential,
    BearerCredential,
    HeaderCredential,
    HttpCredential,
    OAuth2ClientCredentials,
    QueryCredential,
)

Header = tuple[bytes, bytes]
_HEADER_VALUE: Final = re.compile(rb"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


class SecretSource(Protocol):
    """Where secret values come from: a :class:`tether.vault.secrets.SecretStore`."""

    async def get(self, name: str) -> bytes: ...


class InjectionError(Exception):
    """The target's credential cannot be used (the broker answers 502, and audits it)."""


@dataclass(frozen=True, slots=True)
class Injection:
    """What to add to one forwarded request."""

    headers: tuple[Header, ...] = ()
    query_param: tuple[str, str] | None = None
    secrets: tuple[bytes, ...] = ()  # never sent to the agent, in any header
    oauth_client: ClientCredentials | None = None  # to forget its token on a 401
    oauth_token: str | None = None  # the token sent: only that one is forgotten

    def __repr__(self) -> str:  # names only: the values are the credential
        query = None if self.query_param is None else self.query_param[0]
        return f"Injection(headers={self.header_names!r}, query_param={query!r})"

    def refused(self, tokens: OAuth2Tokens) -> None:
        """The target answered 401: forget the OAuth token sent, if any (not a newer one)."""
        if self.oauth_client is not None and self.oauth_token is not None:
            tokens.forget(self.oauth_client, self.oauth_token)

    @property
    def header_names(self) -> tuple[bytes, ...]:
        return tuple(name for name, _ in self.headers)

    def query(self, query: str) -> str:
        """``query`` without the agent's occurrences of the parameter (under any
        percent-encoding and any case of its name: targets decode names, and ASP.NET reads
        them case-insensitively, taking the first), then Tether's."""
        if self.query_param is None:
            return query
        name, value = self.query_param
        key = _param_key(name)
        kept = [p for p in query.split("&") if p and _param_key(p.partition("=")[0]) != key]
        kept.append(f"{name}={quote(value, safe='')}")
        return "&".join(kept)


NO_INJECTION: Final = Injection()


def _param_key(name: str) -> str:
    """A query parameter's name as a target may compare it: decoded, and case-folded as
    .NET's OrdinalIgnoreCase does (upper case first: dotless i and long s are ``I`` and ``S``)."""
    return unquote(name).upper().lower()


async def injection_for(
    credential: HttpCredential | None,
    secrets: SecretSource,
    tokens: OAuth2Tokens,
    tls: ssl.SSLContext | None = None,
) -> Injection:
    """The injection of ``credential`` with the secret's current value."""
    if credential is None:
        return NO_INJECTION
    value = await _secret(secrets, credential.secret)
    if isinstance(credential, HeaderCredential):
        header = _header_value(value, credential.secret)
        name = credential.header_name.lower().encode("ascii")
        return Injection(headers=((name, header),), secrets=(header,))
    if isinstance(credential, BearerCredential):
        token = _header_value(value, credential.secret)
        return Injection(headers=((b"authorization", b"Bearer " + token),), secrets=(token,))
    if isinstance(credential, BasicCredential):
        return _basic(credential, value)
    if isinstance(credential, QueryCredential):
        text = _text(value, credential.secret)
        return Injection(query_param=(credential.param, text), secrets=(value, _quoted(text)))
    assert isinstance(credential, OAuth2ClientCredentials)
    return await _oauth2(credential, value, tokens, tls)


async def _secret(secrets: SecretSource, name: str) -> bytes:
    try:
        return await secrets.get(name)
    except SecretNotFound:
        raise InjectionError(f"secret {name!r} does not exist") from None
    except SecretError as error:  # undecryptable (altered, misplaced, another master key)
        raise InjectionError(str(error)) from None


def _header_value(value: bytes, name: str) -> bytes:
    if _HEADER_VALUE.fullmatch(value) is None:
        raise InjectionError(f"secret {name!r} is not a valid header value")
    return value


def _text(value: bytes, name: str) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InjectionError(f"secret {name!r} is not UTF-8 text") from None
    if not text or not text.isprintable():
        raise InjectionError(f"secret {name!r} holds control characters")
    return text


def _quoted(text: str) -> bytes:
    return quote(text, safe="").encode("ascii")


def _basic(credential: BasicCredential, value: bytes) -> Injection:
    password = _text(value, credential.secret)
    pair = f"{credential.username}:{password}".encode()
    encoded = base64.b64encode(pair)
    header = (b"authorization", b"Basic " + encoded)
    return Injection(headers=(header,), secrets=(encoded, value))


async def _oauth2(
    credential: OAuth2ClientCredentials,
    value: bytes,
    tokens: OAuth2Tokens,
    tls: ssl.SSLContext | None,
) -> Injection:
    client = ClientCredentials(
        token_url=credential.token_url,
        client_id=credential.client_id,
        client_secret=value,
        scope=credential.scope,
        audience=credential.audience,
        auth_method=credential.auth_method,
    )
    try:
        token = await tokens.token(client, tls)
    except OAuth2Error as error:
        raise InjectionError(f"OAuth token for {credential.client_id!r}: {error}") from None
    encoded = _header_value(token.encode("ascii", errors="replace"), credential.secret)
    return Injection(
        headers=((b"authorization", b"Bearer " + encoded),),
        secrets=(encoded, value),
        oauth_client=client,
        oauth_token=token,
    )
