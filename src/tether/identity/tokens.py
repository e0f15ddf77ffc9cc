"""Access tokens: compact JWS (RFC 7515) with the RFC 9068 ``at+jwt`` profile, EdDSA.

``TokenIssuer.issue`` signs ``Claims`` (see ``tether.identity.claims``) with the key
ring's active key; ``TokenVerifier.verify`` returns the claims of a token it accepts and
raises a ``TokenInvalid`` (or subclass) otherwise. Revocation is *not* checked here: the
caller checks the returned ``jti``/agent/task against the revocation set on every use.

Verification, in order (cheap and attacker-independent checks first; the payload is
only decoded once its signature verified):

1. at most ``MAX_TOKEN_SIZE`` (8 KiB) of ASCII, three base64url parts;
2. header: exactly the members ``alg``, ``typ``, ``kid``; ``alg`` is exactly ``EdDSA``
   (``none``, ``HS256``, ``RS256``, ``ES256``... are refused before any key is looked
   at, so algorithm confusion is impossible); ``typ`` is exactly ``at+jwt``;
3. ``kid`` names a key the ring accepts *now* (active, or retired within the overlap);
4. the Ed25519 signature over the exact received ``header.payload`` bytes;
5. claims well-typed; ``iss`` and ``aud`` equal Tether's; ``exp`` not passed, ``nbf``
   reached and ``iat`` not in the future, each within ``leeway`` seconds; ``cnf``
   holds exactly one binding.

**The verification cache.** Verifying costs one Ed25519 verification (tens of µs); an
agent presents the same token on every action. The verifier keeps an LRU map from
SHA-256(token) to (claims, kid), bounded by ``cache_size``:

* an entry is added only after *every* check above passed, by ``verify`` itself: the
  cache can never hold claims whose signature was not checked;
* a hit is an exact match of the whole token (a SHA-256 collision aside), so a token
  differing by one character, signature included, is a miss and is verified in full;
* every hit re-checks ``exp`` and ``nbf`` against the clock and asks the key ring
  whether the kid is still accepted (rotation past the overlap, or ``remove`` of a leaked
  key, takes effect on cached tokens at once); entries past ``exp`` are dropped;
* the key is a hash so that the cache does not keep bearer tokens in memory.

A second, smaller memo maps the text of a header already seen on a fully verified token
to its kid (every token of one key has the same header, and the header check is a pure
function of that text), so that step 2 is a dict lookup on the uncached path too.

**Why not PyJWT.** Measured with ``bench/token_issue.py`` (which repeats the comparison
whenever PyJWT is installed), in ratios to raw Ed25519 in the same run on the development
VM: PyJWT ``decode`` ran at 0.50-0.59x of raw verification, ``TokenVerifier.verify``
(uncached) at 0.59-0.63x; PyJWT ``encode`` of a ready dict at 0.49-0.61x of raw signing,
``TokenIssuer.issue`` (which also builds the claims and draws the jti) at 0.37-0.51x.
Speed is a wash: the Ed25519 operation dominates either way. Strictness decides. PyJWT
(2.15, checked) lets the last of duplicate JSON members win, does not check ``typ``,
ignores unknown header members such as ``jku``/``x5u``, accepts ``aud`` arrays and a
padded signature segment; each of these would need a check wrapped around it, and the
allow-list of algorithms is a per-call argument that every call site must get right.
The strict subset Tether needs (one algorithm, one header shape, no key discovery) is
about 230 lines over ``cryptography`` (``tether.identity.jose``), and one dependency less.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from tether.identity import jose
from tether.identity.claims import (
    MAX_DERIVED_FROM,
    Actor,
    Claims,
    Confirmation,
    Delegator,
    Runtime,
    Task,
    act_groups_match,
    validate_new,
)
from tether.identity.errors import IssuanceError, TokenExpired, TokenInvalid
from tether.identity.keys import KeyRing

__all__ = [
    "MAX_TOKEN_SIZE",
    "TOKEN_TYPE",
    "Actor",
    "Claims",
    "Confirmation",
    "Runtime",
    "Task",
    "TokenIssuer",
    "TokenVerifier",
]

Clock = Callable[[], float]

MAX_TOKEN_SIZE: Final = 8192
TOKEN_TYPE: Final = "at+jwt"  # noqa: S105 (a media type, not a secret)
ALG: Final = jose.ED25519
_HEADER_MEMBERS: Final = frozenset({"alg", "typ", "kid"})
_MAX_KNOWN_HEADERS: Final = 64
_SIGNATURE_SIZE: Final = 64


class TokenIssuer:
    """Signs access tokens with the key ring's active key."""

    def __init__(
        self,
        keyring: KeyRing,
        *,
        issuer: str,
        audience: str,
        clock: Clock,
        default_lifetime: int = 600,
        max_lifetime: int = 3600,
    ) -> None:
        if not 0 < default_lifetime <= max_lifetime:
            raise IssuanceError("need 0 < default_lifetime <= max_lifetime")
        if max_lifetime > keyring.overlap:
            raise IssuanceError(
                "max_lifetime exceeds the key ring's overlap: tokens would outlive their key"
            )
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self.default_lifetime = default_lifetime
        self.max_lifetime = max_lifetime
        self._header: tuple[str, str] = ("", "")  # (kid, encoded header) of the last key

    def issue(
        self,
        *,
        subject: str,
        task: Task,
        scope: Sequence[str],
        runtime: Runtime,
        cnf: Confirmation,
        act: Actor | None = None,
        agent: str | None = None,
        lifetime: int | None = None,
        groups: Sequence[str] = (),
        parent_jti: str | None = None,
        derived_from: Sequence[str] = (),
        family: str | None = None,
        act_groups: Sequence[Delegator] = (),
    ) -> tuple[str, Claims]:
        """A signed token and its claims. ``IssuanceError`` if the lifetime is above the cap
        (or not a positive integer), or if a value is not a non-empty string.

        ``family`` is the renewal family the token joins (an exchange of an agent's own
        token); None starts a new one, named by the new token's jti."""
        lifetime = self.default_lifetime if lifetime is None else lifetime
        if type(lifetime) is not int or not 0 < lifetime <= self.max_lifetime:
            raise IssuanceError(
                f"token lifetime must be an integer in 1..{self.max_lifetime} seconds"
            )
        try:
            validate_new(subject, task, scope, runtime, agent)
        except ValueError as exc:
            raise IssuanceError(str(exc)) from None
        if len(derived_from) > MAX_DERIVED_FROM:
            raise IssuanceError(f"a token is derived from at most {MAX_DERIVED_FROM} tokens")
        if family is not None and (not isinstance(family, str) or not family):
            raise IssuanceError("a renewal family is a non-empty string")
        if act_groups and not act_groups_match(act, act_groups):
            raise IssuanceError("act_groups must name the users of act, in order")
        now = int(self._clock())
        jti = secrets.token_urlsafe(16)
        claims = Claims(
            iss=self._issuer,
            aud=self._audience,
            sub=subject,
            jti=jti,
            iat=now,
            nbf=now,
            exp=now + lifetime,
            task=task,
            scope=tuple(scope),
            runtime=runtime,
            cnf=cnf,
            act=act,
            agent=agent,
            groups=tuple(groups),
            parent_jti=parent_jti,
            derived_from=tuple(derived_from),
            family=jti if family is None else family,
            act_groups=tuple(act_groups),
        )
        token = self._sign(claims)
        if len(token) > MAX_TOKEN_SIZE:
            raise IssuanceError(f"token would exceed {MAX_TOKEN_SIZE} bytes")
        return token, claims

    def _sign(self, claims: Claims) -> str:
        key = self._keyring.active
        kid, header = self._header
        if kid != key.kid:
            header = jose.b64url_encode(
                jose.json_bytes({"alg": ALG, "typ": TOKEN_TYPE, "kid": key.kid})
            )
            self._header = (key.kid, header)
        signing_input = header + "." + jose.b64url_encode(jose.json_bytes(claims.to_json()))
        return signing_input + "." + jose.b64url_encode(key.sign(signing_input.encode("ascii")))


class TokenVerifier:
    """Verifies access tokens strictly, with a cache of tokens already verified."""

    def __init__(
        self,
        keyring: KeyRing,
        *,
        issuer: str,
        audience: str,
        clock: Clock,
        leeway: float = 5.0,
        cache_size: int = 10_000,
    ) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._leeway = leeway
        self._cache = _VerifiedCache(cache_size)
        # Header text -> kid, for headers seen on a fully verified token: every token of
        # one key has the same header, and its check is a pure function of its text.
        self._headers: dict[str, str] = {}

    @property
    def cached(self) -> int:
        """Tokens currently in the verification cache."""
        return len(self._cache)

    def verify(self, token: str) -> Claims:
        """The claims of ``token`` if Tether issued it and it is valid now; else raises
        ``TokenExpired`` or ``TokenInvalid``. Does not check revocation."""
        if len(token) > MAX_TOKEN_SIZE or not token.isascii():
            raise TokenInvalid("malformed token")
        now = self._clock()
        digest = hashlib.sha256(token.encode("ascii")).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            claims, kid = hit
            if self._keyring.verification_key(kid, now) is None:
                self._cache.drop(digest)
                raise TokenInvalid("signing key no longer accepted")
            self._check_times(claims, now, digest)
            return claims
        claims, kid = self._verify_uncached(token, now)
        self._cache.put(digest, claims, kid)
        return claims

    def _verify_uncached(self, token: str, now: float) -> tuple[Claims, str]:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenInvalid("malformed token")
        header_b64, payload_b64, signature_b64 = parts
        kid = self._headers.get(header_b64) or self._parse_header(header_b64)
        try:
            signature = jose.b64url_decode(signature_b64)
        except ValueError:
            raise TokenInvalid("malformed token") from None
        if len(signature) != _SIGNATURE_SIZE:
            raise TokenInvalid("malformed token")
        key = self._keyring.verification_key(kid, now)
        if key is None:
            raise TokenInvalid("unknown signing key")
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        if not jose.verify_signature(ALG, key, signature, signing_input):
            raise TokenInvalid("bad signature")
        try:
            payload = jose.json_object(jose.b64url_decode(payload_b64))
        except ValueError:
            raise TokenInvalid("malformed token payload") from None
        claims = Claims.from_json(payload)
        if claims.iss != self._issuer:
            raise TokenInvalid("wrong issuer")
        if claims.aud != self._audience:
            raise TokenInvalid("wrong audience")
        if claims.iat > now + self._leeway:
            raise TokenInvalid("token issued in the future")
        self._check_times(claims, now, None)
        if len(self._headers) < _MAX_KNOWN_HEADERS:
            self._headers[header_b64] = kid
        return claims, kid

    def _parse_header(self, header_b64: str) -> str:
        try:
            header = jose.json_object(jose.b64url_decode(header_b64))
        except ValueError:
            raise TokenInvalid("malformed token") from None
        return self._check_header(header)

    @staticmethod
    def _check_header(header: dict[str, object]) -> str:
        if header.get("alg") != ALG:
            raise TokenInvalid("unsupported token algorithm")
        if header.get("typ") != TOKEN_TYPE:
            raise TokenInvalid("wrong token type")
        if set(header) != _HEADER_MEMBERS:
            raise TokenInvalid("unexpected token header")
        kid = header["kid"]
        if not isinstance(kid, str):
            raise TokenInvalid("unknown signing key")
        return kid

    def _check_times(self, claims: Claims, now: float, digest: bytes | None) -> None:
        if now >= claims.exp + self._leeway:
            if digest is not None:
                self._cache.drop(digest)
            raise TokenExpired()
        if now + self._leeway < claims.nbf:
            raise TokenInvalid("token not yet valid")


class _VerifiedCache:
    """A bounded LRU of verified tokens: SHA-256(token) -> (claims, kid)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, tuple[Claims, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> tuple[Claims, str] | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
            return entry

    def put(self, digest: bytes, claims: Claims, kid: str) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._entries[digest] = (claims, kid)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def drop(self, digest: bytes) -> None:
        with self._lock:
            self._entries.pop(digest, None)
