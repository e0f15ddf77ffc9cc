"""DPoP (RFC 9449): proofs that the presenter of a token holds its private key.

``DPoPVerifier.verify`` checks one proof against one request, in the order of RFC 9449
section 4.3, and returns the key's thumbprint (``jkt``), ``jti`` and ``iat``; anything
wrong raises ``DPoPInvalid`` (``ReplayDetected`` for a reused jti) or, when the proof is
fine but its key is not the token's, ``BindingMismatch``. ``make_proof`` is the client
side, for the SDK and the tests.

Security decisions:

* **The allow-list decides the algorithm** (``EdDSA`` and ``ES256`` by default; nothing
  symmetric, no ``none`` exists in ``jose``), and the ``jwk`` key type must match it.
  A ``jwk`` carrying private members is refused. A ``crit`` header is refused (no
  extension is understood).
* **Signature first.** The payload is decoded only after the signature verified with
  the header's key; then ``htm``, ``htu``, ``iat``, ``ath``, the token binding, and last
  the replay cache. The jti is recorded only for a proof that passed everything else,
  so a forged or misdirected proof can neither fill the cache nor burn a real jti, and
  the replay key hashes (jkt, jti), so one key's proofs cannot collide with another's.
* **Caches hold pure functions of exact text only.** What a proof header yields (its
  ``typ``, ``alg`` and ``crit`` checks, the ``jwk``'s key and thumbprint) is remembered by
  the header's exact base64url text once a proof carrying it verified (at most 4,096
  headers of up to 1 KiB; all dropped when full), and the ``ath`` expected for a token by
  the token's exact text. Every proof's signature, claims and jti are checked on every
  request.
* **htu.** The proof's ``htu`` must equal the request URI with query and fragment
  removed, after normalisation of both: scheme and host lower-cased, default port
  (80/443) removed, empty path as ``/``, percent-encodings upper-cased and unreserved
  characters decoded (RFC 3986 sections 6.2.2 and 6.2.3). A proof ``htu`` that itself
  has a query or a fragment is refused (RFC 9449 section 4.2 says it has none), as is
  any URI with characters outside printable ASCII (``urlsplit`` silently drops tabs and
  newlines). Dot segments are not resolved: the HTTP front-end refuses such paths.
* **Time window.** ``iat`` may be at most ``max_age`` seconds old and ``future_leeway``
  seconds ahead; the jti is remembered until the proof could no longer be accepted.
* **Binding is mandatory with a token.** When an access token is presented, ``ath``
  must be its hash and ``expected_jkt`` (the token's ``cnf.jkt``) must be given and
  equal the proof key's thumbprint; a token without ``jkt`` is a ``BindingMismatch``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from tether.identity import jose
from tether.identity.errors import BindingMismatch, DPoPInvalid, ReplayDetected
from tether.identity.keys import jwk_thumbprint
from tether.identity.replay import ReplayCache

PROOF_TYPE: Final = "dpop+jwt"
MAX_PROOF_SIZE: Final = 8192
MAX_JTI_LENGTH: Final = 256
DEFAULT_ALGS: Final = frozenset({jose.ED25519, jose.ES256})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_PERCENT: Final = re.compile(r"%[0-9A-Fa-f]{2}")
_QUERY_OR_FRAGMENT: Final = re.compile(r"[?#]")
_PRINTABLE: Final = re.compile(r"[!-~]+")
_JWK_FIELDS: Final = ("kty", "crv", "x", "y")
_MAX_SAFE_INT: Final = 2**53
_MAX_KNOWN_HEADERS: Final = 4096
_MAX_KNOWN_HEADER_SIZE: Final = 1024  # an ES256 proof header is about 300 characters
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True)
class DPoPResult:
    """An accepted proof: its key thumbprint, jti, iat, and its replay-cache entry."""

    jkt: str
    jti: str
    iat: int
    replay_key: str
    replay_expires_at: float


class DPoPVerifier:
    """Verifies DPoP proofs against requests; thread-safe if its replay cache is."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        replay_cache: ReplayCache,
        max_age: float = 60.0,
        future_leeway: float = 5.0,
        algs: Set[str] = DEFAULT_ALGS,
    ) -> None:
        if not algs or not set(algs) <= jose.SUPPORTED_ALGS:
            raise ValueError(f"DPoP algorithms must be among {sorted(jose.SUPPORTED_ALGS)}")
        self._clock = clock
        self._replay = replay_cache
        self._max_age = max_age
        self._future_leeway = future_leeway
        self._algs = frozenset(algs)
        # Header text -> (alg, key, jkt), for headers of proofs whose signature verified:
        # an agent's proofs share one header, and its checks are a pure function of it.
        self._headers: dict[str, tuple[str, jose.PublicKey, str]] = {}

    @property
    def algs(self) -> str:
        """The accepted algorithms, space-separated (the ``algs`` challenge parameter)."""
        return " ".join(sorted(self._algs))

    def verify(
        self,
        proof: str | None,
        *,
        htm: str,
        htu: str,
        access_token: str | None = None,
        expected_jkt: str | None = None,
    ) -> DPoPResult:
        """``check``, then record the jti: ``ReplayDetected`` if it was already used."""
        result = self.check(
            proof, htm=htm, htu=htu, access_token=access_token, expected_jkt=expected_jkt
        )
        if self._replay.seen(result.replay_key, result.replay_expires_at):
            raise ReplayDetected()
        return result

    def check(
        self,
        proof: str | None,
        *,
        htm: str,
        htu: str,
        access_token: str | None = None,
        expected_jkt: str | None = None,
    ) -> DPoPResult:
        """Every check but the replay cache (for callers that record the jti themselves)."""
        jkt, claims = self._decode(proof)
        jti, iat = _claim_jti(claims), _claim_iat(claims)
        if claims.get("htm") != htm:
            raise DPoPInvalid("htm does not match the request method")
        if not _same_htu(claims.get("htu"), htu):
            raise DPoPInvalid("htu does not match the request URI")
        now = self._clock()
        if now - iat > self._max_age:
            raise DPoPInvalid("DPoP proof is stale")
        if iat - now > self._future_leeway:
            raise DPoPInvalid("DPoP proof is issued in the future")
        if access_token is not None:
            _check_ath(claims.get("ath"), access_token)
            if expected_jkt is None:
                raise BindingMismatch("token is not bound to a DPoP key")
        if expected_jkt is not None and not hmac.compare_digest(_utf8(jkt), _utf8(expected_jkt)):
            raise BindingMismatch("DPoP key does not match the token binding")
        return DPoPResult(jkt, jti, int(iat), _replay_key(jkt, jti), iat + self._max_age + 1)

    def _decode(self, proof: str | None) -> tuple[str, dict[str, Any]]:
        if not proof:
            raise DPoPInvalid("missing DPoP proof")
        if len(proof) > MAX_PROOF_SIZE or not proof.isascii():
            raise DPoPInvalid("malformed DPoP proof")
        try:
            jws = jose.split_raw(proof, max_size=MAX_PROOF_SIZE)
        except ValueError:
            raise DPoPInvalid("malformed DPoP proof") from None
        known = self._headers.get(jws.header_b64)
        alg, key, jkt = known if known is not None else self._header(jws.header_b64)
        if not jose.verify_signature(alg, key, jws.signature, jws.signing_input):
            raise DPoPInvalid("bad DPoP proof signature")
        if known is None and len(jws.header_b64) <= _MAX_KNOWN_HEADER_SIZE:
            if len(self._headers) >= _MAX_KNOWN_HEADERS:
                self._headers.clear()
            self._headers[jws.header_b64] = (alg, key, jkt)
        try:
            return jkt, jws.payload()
        except ValueError:
            raise DPoPInvalid("malformed DPoP proof payload") from None

    def _header(self, header_b64: str) -> tuple[str, jose.PublicKey, str]:
        """The algorithm, key and key thumbprint of a proof header, every check applied."""
        try:
            header = jose.json_object(jose.b64url_decode(header_b64))
        except ValueError:
            raise DPoPInvalid("malformed DPoP proof") from None
        alg = header.get("alg")
        if header.get("typ") != PROOF_TYPE:
            raise DPoPInvalid("wrong DPoP proof type")
        if not isinstance(alg, str) or alg not in self._algs:
            raise DPoPInvalid("unsupported DPoP algorithm")
        if "crit" in header:
            raise DPoPInvalid("unsupported critical header")
        key, jkt = _jwk_key(header.get("jwk"), alg)
        return alg, key, jkt


def make_proof(
    private_key: jose.PrivateKey,
    htm: str,
    htu: str,
    *,
    now: float,
    access_token: str | None = None,
    jti: str | None = None,
) -> str:
    """A DPoP proof for one request (query and fragment of ``htu`` are dropped)."""
    alg = jose.alg_for_key(private_key)
    header = {"typ": PROOF_TYPE, "alg": alg, "jwk": jose.public_jwk(private_key)}
    claims: dict[str, Any] = {
        "jti": jti if jti is not None else secrets.token_urlsafe(16),
        "htm": htm,
        "htu": _QUERY_OR_FRAGMENT.split(htu, maxsplit=1)[0],
        "iat": int(now),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    return jose.encode_compact(header, claims, lambda data: jose.sign(alg, private_key, data))


def access_token_hash(access_token: str) -> str:
    """The ``ath`` claim: base64url(SHA-256(token))."""
    return jose.b64url_encode(hashlib.sha256(_utf8(access_token)).digest())


@functools.lru_cache(maxsize=1024)  # a pure function; bounded (URIs are at most 8 KiB)
def normalize_htu(uri: str, *, strip_query: bool = True) -> str:
    """``uri`` normalised for htu comparison; ``ValueError`` if it is not an http(s) URI
    (or, with ``strip_query=False``, if it has a query or fragment)."""
    base = _QUERY_OR_FRAGMENT.split(uri, maxsplit=1)[0]
    if not strip_query and base != uri:
        raise ValueError("htu has a query or fragment")
    if not _PRINTABLE.fullmatch(base):
        raise ValueError("not a printable ASCII URI")
    parts = urlsplit(base)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
        raise ValueError("not an http(s) URI with a host")
    port = parts.port
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    path = _PERCENT.sub(_normalize_escape, parts.path) or "/"
    return f"{scheme}://{netloc}{path}"


def _normalize_escape(match: re.Match[str]) -> str:
    char = chr(int(match.group()[1:], 16))
    return char if char in _UNRESERVED else match.group().upper()


def _same_htu(claimed: object, request_uri: str) -> bool:
    if not isinstance(claimed, str):
        return False
    try:
        return normalize_htu(claimed, strip_query=False) == normalize_htu(request_uri)
    except ValueError:
        return False


def _jwk_key(jwk: object, alg: str) -> tuple[jose.PublicKey, str]:
    if not isinstance(jwk, dict):
        raise DPoPInvalid("invalid DPoP jwk")
    if jose.PRIVATE_JWK_MEMBERS.intersection(jwk):
        raise DPoPInvalid("DPoP jwk contains a private key")
    fields = tuple(jwk.get(name) for name in _JWK_FIELDS)
    if jwk.get("alg", alg) != alg or not all(f is None or isinstance(f, str) for f in fields):
        raise DPoPInvalid("invalid DPoP jwk")
    try:
        return _public_key(alg, *fields)
    except ValueError:
        raise DPoPInvalid("invalid DPoP jwk") from None


@functools.lru_cache(maxsize=4096)
def _public_key(alg: str, *fields: str | None) -> tuple[jose.PublicKey, str]:
    # An agent signs every proof with the same key: memoise the key object and its
    # thumbprint (a pure function of these members; errors are not memoised).
    jwk = {name: value for name, value in zip(_JWK_FIELDS, fields, strict=True) if value}
    return jose.public_key_from_jwk(jwk, alg), jwk_thumbprint(jwk)


def _claim_jti(claims: dict[str, Any]) -> str:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise DPoPInvalid("DPoP proof jti missing or invalid")
    return jti


def _claim_iat(claims: dict[str, Any]) -> float:
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise DPoPInvalid("DPoP proof iat missing or invalid")
    # Compared, never converted: float() of a 400-digit JSON integer raises OverflowError
    # (anyone can sign a proof with a key of their own); NaN fails the comparison too.
    if not abs(iat) < _MAX_SAFE_INT:
        raise DPoPInvalid("DPoP proof iat missing or invalid")
    return float(iat)


def _check_ath(ath: object, access_token: str) -> None:
    expected = _expected_ath(access_token)
    if not isinstance(ath, str) or not hmac.compare_digest(_utf8(ath), expected):
        raise DPoPInvalid("ath does not match the access token")


@functools.lru_cache(maxsize=4096)  # a pure function of the token's exact text
def _expected_ath(access_token: str) -> bytes:
    return access_token_hash(access_token).encode("ascii")


def _replay_key(jkt: str, jti: str) -> str:
    material = _utf8(jkt) + b"\x00" + _utf8(jti)
    return "dpop:" + jose.b64url_encode(hashlib.sha256(material).digest())


def _utf8(text: str) -> bytes:
    # JSON strings may hold lone surrogates; they must compare, not crash.
    return text.encode("utf-8", "surrogatepass")
