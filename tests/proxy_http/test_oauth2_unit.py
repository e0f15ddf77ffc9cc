"""The OAuth 2.0 token response parser and cache rules, without a network (the end-to-end
tests against a real token endpoint are in test_credentials.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.vault.oauth2 import ClientCredentials, OAuth2Error, OAuth2Tokens, _check_url, _parse

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
    response = httpx.Response(200, content=json.dumps(body).encode())
    try:
        token, lifetime = _parse(response)
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
            _parse(httpx.Response(200, content=content))


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
