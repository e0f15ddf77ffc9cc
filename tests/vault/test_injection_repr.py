"""What an injection and an OAuth client look like in a repr (a log line, an error, a
debugger): the names of what is injected, never a value."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from tether.vault.http_inject import injection_for
from tether.vault.oauth2 import ClientCredentials, OAuth2Tokens, _Cached
from tether.vault.target_specs import HttpCredential

VALUE = b"sk_live_S3cretValue"


class Source:
    async def get(self, name: str) -> bytes:
        return VALUE


@pytest.mark.parametrize(
    "credential",
    [
        {"type": "bearer", "secret": "s"},
        {"type": "header", "secret": "s", "header_name": "X-Api-Key"},
        {"type": "basic", "secret": "s", "username": "svc"},
        {"type": "query", "secret": "s", "param": "api_key"},
    ],
)
async def test_an_injection_repr_names_and_never_shows(credential: dict[str, str]) -> None:
    parsed = TypeAdapter(HttpCredential).validate_python(credential)
    injection = await injection_for(parsed, Source(), OAuth2Tokens())
    shown = repr(injection)
    assert "S3cret" not in shown and "c2tf" not in shown  # nor its base64 (basic)
    assert "authorization" in shown or "x-api-key" in shown or "api_key" in shown


def test_an_oauth_client_and_its_cached_token_never_show_their_secrets() -> None:
    client = ClientCredentials("https://idp.example/token", "c", VALUE, scope="read")
    assert "S3cret" not in repr(client) and "idp.example" in repr(client)
    assert "tok-S3cret" not in repr(_Cached("tok-S3cret", 1.0))
