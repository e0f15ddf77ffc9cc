"""The OAuth 2.0 token response parser and cache rules, and hostile token endpoints (a raw
server on loopback that answers too much, too slowly or nonsense); the end-to-end tests
through the broker are in test_credentials.py and test_vault_review.py."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.vault.oauth2 import (
    MAX_LIFETIME,
    ClientCredentials,
    OAuth2Error,
    OAuth2Tokens,
    _check_url,
    _parse,
)

from .rawupstream import RawSeen, RawUpstream, ok

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=10,
)  # fmt: skip
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "access_token": st.text(max_size=30) | st.integers(),
        "token_type": st.sampled_from(["Bearer", "bearer", "DPoP", "mac", ""]) | st.integers(),
        "expires_in": st.integers(-5, 10**6) | st.text(max_size=6) | st.booleans(),
    },
)


@settings(max_examples=300, deadline=None)
@given(JSON | FIELDS)
def test_parse_never_crashes_and_only_returns_usable_tokens(body: Any) -> None:
    try:
        token, lifetime = _parse(json.dumps(body).encode())
    except OAuth2Error:
        return
    assert isinstance(token, str) and token and token.isprintable()
    assert lifetime is None or lifetime > 0
    assert isinstance(body, dict) and body["access_token"] == token


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_parse_refuses_what_is_not_json(content: bytes) -> None:
    try:
        json.loads(content)
    except ValueError:
        with pytest.raises(OAuth2Error):
            _parse(content)


def test_token_url_must_be_https_except_on_loopback() -> None:
    _check_url("https://idp.example/token")
    _check_url("http://127.0.0.1:9000/token")
    _check_url("http://localhost/token")
    for url in ("http://idp.example/token", "ftp://127.0.0.1/x", "https:///x"):
        with pytest.raises(OAuth2Error):
            _check_url(url)


async def test_failures_are_shared_by_waiters_and_never_cached() -> None:
    tokens = OAuth2Tokens()
    client = ClientCredentials("http://idp.example/token", "c", b"s")
    with pytest.raises(OAuth2Error, match="must be https"):
        await tokens.token(client, None)
    with pytest.raises(OAuth2Error, match="must be https"):
        await tokens.token(client, None)
    assert tokens.fetches == 0  # refused before any request, and nothing cached


def test_the_cache_key_follows_the_secret() -> None:
    one = ClientCredentials("https://idp/t", "c", b"secret-1", scope="a")
    two = ClientCredentials("https://idp/t", "c", b"secret-2", scope="a")
    assert one.key() != two.key()
    assert "secret-1" not in repr(one.key())


# --- a hostile or broken token endpoint (real loopback server) ----------------------------


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (b"9" * 400, MAX_LIFETIME),  # past a float: was an OverflowError (a 500 at the broker)
        (b"1e300", MAX_LIFETIME),  # was cached for ~forever
        (b'"120"', 120.0),
        (b"3600", 3600.0),
    ],
)
def test_a_lifetime_is_finite_and_capped(expires_in: bytes, lifetime: float) -> None:
    body = b'{"access_token": "t", "expires_in": ' + expires_in + b"}"
    assert _parse(body) == ("t", lifetime)


@pytest.mark.parametrize(
    "expires_in",
    [b"1e999", b"Infinity", b"-Infinity", b"NaN", b'"\\u0663"', b"0", b"-1", b"true"],
)
def test_a_lifetime_that_is_not_a_positive_finite_number_is_refused(expires_in: bytes) -> None:
    # Infinity and 1e999 were cached forever; NaN made every request fetch a token anew.
    with pytest.raises(OAuth2Error, match=r"expires_in|not JSON"):
        _parse(b'{"access_token": "t", "expires_in": ' + expires_in + b"}")


@pytest.mark.parametrize("token", ["\u00e9t\u00e9", "a b", "a\u2028b", "t\u0000"])
def test_an_access_token_is_visible_ascii(token: str) -> None:
    # A non-ASCII token was sent re-encoded ("?t?"): a token the endpoint never issued.
    with pytest.raises(OAuth2Error, match="access_token"):
        _parse(json.dumps({"access_token": token}).encode())


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(), st.floats(), st.text(max_size=30)))
def test_any_expires_in_gives_a_bounded_lifetime_or_an_error(expires_in: object) -> None:
    body = json.dumps({"access_token": "t", "expires_in": expires_in}).encode()
    try:
        _token, lifetime = _parse(body)
    except OAuth2Error:
        return
    assert lifetime is not None and 0 < lifetime <= MAX_LIFETIME


def _endpoint(answer: bytes | list[bytes]) -> RawUpstream:
    def respond(seen: RawSeen) -> bytes | list[bytes]:
        return answer

    return RawUpstream(respond).start()


async def _fetch(server: RawUpstream, tokens: OAuth2Tokens, limit: float = 8) -> str:
    client = ClientCredentials(server.url + "/token", "c", b"client-secret")
    return await asyncio.wait_for(tokens.token(client, None), limit)


async def test_a_huge_declared_answer_is_refused_unread() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 4000000000\r\n\r\n"
    server = _endpoint([head + b" " * 65536, b" " * 65536])
    try:
        with pytest.raises(OAuth2Error, match="too large"):  # was: read (or waited) to the end
            await _fetch(server, OAuth2Tokens(timeout=30))
    finally:
        server.stop()


async def test_an_endless_chunked_answer_is_cut_at_the_limit() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"8000\r\n" + b" " * 0x8000 + b"\r\n"
    server = _endpoint([head, *[chunk] * 60])  # 2 MB over 6 s, never finished
    try:
        began = time.monotonic()
        with pytest.raises(OAuth2Error, match="too large"):
            await _fetch(server, OAuth2Tokens(timeout=30))
        assert time.monotonic() - began < 2
    finally:
        server.stop()


async def test_a_trickling_answer_is_cut_at_one_deadline() -> None:
    # Each byte comes before the read timeout: only a deadline on the whole exchange ends it.
    body = b'{"access_token": "t"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    server = _endpoint([head, *(body[i : i + 1] for i in range(len(body)))])  # about 2 s
    try:
        began = time.monotonic()
        with pytest.raises(OAuth2Error, match="in time"):
            await _fetch(server, OAuth2Tokens(timeout=0.6))
        assert time.monotonic() - began < 1.5
    finally:
        server.stop()


async def test_a_well_formed_answer_still_gives_a_token() -> None:
    server = _endpoint(ok(b'{"access_token": "tok-1", "token_type": "bearer"}'))
    try:
        assert await _fetch(server, OAuth2Tokens()) == "tok-1"
        assert server.seen[0].header("accept-encoding") == ["identity"]
    finally:
        server.stop()


async def test_a_client_secret_that_is_not_utf8_is_an_oauth_error() -> None:
    tokens = OAuth2Tokens()
    client = ClientCredentials("https://idp.example/token", "c", b"\xff\xfe")
    with pytest.raises(OAuth2Error, match="UTF-8"):  # was a UnicodeDecodeError (a 500)
        await tokens.token(client, None)


async def test_expired_entries_do_not_pile_up() -> None:
    now = [0.0]
    server = _endpoint(ok(b'{"access_token": "t", "expires_in": 60}'))
    tokens = OAuth2Tokens(clock=lambda: now[0])
    try:
        for number in range(5):  # a rotated client secret is a new cache key each time
            client = ClientCredentials(server.url + "/t", "c", b"secret-%d" % number)
            await tokens.token(client, None)
            now[0] += 100
        assert len(tokens._cache) == 1
    finally:
        server.stop()


async def test_a_late_refusal_of_an_old_token_keeps_the_new_one() -> None:
    # Requests sent with token 1 are refused (401) one after the other: the first makes
    # Tether fetch token 2; the later ones used to forget token 2 too, one fetch each.
    issued: list[bytes] = []

    def respond(seen: RawSeen) -> bytes:
        issued.append(b"tok-%d" % (len(issued) + 1))
        return ok(b'{"access_token": "' + issued[-1] + b'", "expires_in": 3600}')

    server = RawUpstream(respond).start()
    tokens = OAuth2Tokens()
    client = ClientCredentials(server.url + "/token", "c", b"client-secret")
    try:
        assert await tokens.token(client, None) == "tok-1"
        tokens.forget(client, "tok-1")  # the first refusal
        assert await tokens.token(client, None) == "tok-2"
        for _ in range(3):  # the refusals of requests that were in flight with tok-1
            tokens.forget(client, "tok-1")
            assert await tokens.token(client, None) == "tok-2"
        assert tokens.fetches == 2
    finally:
        server.stop()


async def test_proxy_variables_never_route_the_client_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With HTTP_PROXY in the node's environment the client secret went in clear to the
    # proxy, whose answer became the token injected upstream.
    proxy = _endpoint(ok(b'{"access_token": "from-the-proxy"}'))
    endpoint = _endpoint(ok(b'{"access_token": "from-the-endpoint"}'))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        assert await _fetch(endpoint, OAuth2Tokens()) == "from-the-endpoint"
        assert proxy.seen == []
    finally:
        proxy.stop()
        endpoint.stop()


async def test_a_token_is_not_shared_between_tls_settings() -> None:
    # Two targets, one OAuth client: one opted out of TLS verification. What its token
    # endpoint answered (over a connection anyone could have intercepted) was injected into
    # the requests of the target that verifies.
    issued: list[bytes] = []

    def respond(seen: RawSeen) -> bytes:
        issued.append(b"tok-%d" % (len(issued) + 1))
        return ok(b'{"access_token": "' + issued[-1] + b'"}')

    server = RawUpstream(respond).start()
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    verified = ssl.create_default_context()
    tokens = OAuth2Tokens()
    client = ClientCredentials(server.url + "/token", "c", b"client-secret")
    try:
        assert await tokens.token(client, unverified) == "tok-1"
        assert await tokens.token(client, verified) == "tok-2"
        assert await tokens.token(client, verified) == "tok-2"  # still cached per setting
        assert await tokens.token(client, unverified) == "tok-1"
        tokens.forget(client, "tok-2")
        assert await tokens.token(client, unverified) == "tok-1"
        assert await tokens.token(client, verified) == "tok-3"
    finally:
        server.stop()


async def test_the_first_requester_hanging_up_does_not_fail_the_others() -> None:
    # The fetch ran in the task of the request that started it: when that agent hung up,
    # every request waiting for the same token failed (a 502) with "cancelled".
    body = b'{"access_token": "tok-1"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    server = _endpoint([head, body])  # the body 0.1 s after the head
    tokens = OAuth2Tokens()
    client = ClientCredentials(server.url + "/token", "c", b"client-secret")
    try:
        first = asyncio.ensure_future(tokens.token(client, None))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(tokens.token(client, None))
        await asyncio.sleep(0)
        first.cancel()
        assert await asyncio.wait_for(second, 5) == "tok-1"
        assert tokens.fetches == 1
        assert await tokens.token(client, None) == "tok-1"  # and it was cached
    finally:
        server.stop()
