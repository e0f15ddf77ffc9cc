"""The SDK's side of the protocol, seen by a scripted server (httpx ``MockTransport``).

The real server is exercised by test_e2e_serve.py; here the clock is the test's, so the
renewal point and the exact requests the SDK sends can be checked.
"""

from __future__ import annotations

import base64
import json
import socket
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from tether.client import (
    ACCESS_TOKEN_TYPE,
    JOIN_TOKEN_TYPE,
    TetherClient,
    TetherError,
    TetherRefused,
    TetherUnavailable,
    decode_claims,
)
from tether.identity.dpop import access_token_hash


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def fake_token(iat: int, exp: int, n: int) -> str:
    claims = {"iat": iat, "exp": exp, "jti": f"j{n}", "scope": ["*"]}
    return f"{b64({'alg': 'EdDSA'})}.{b64(claims)}.sig"


def unverified(jws: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = jws.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
    )


class Server:
    """Answers the token endpoint with tokens living 100 s, and echoes other requests."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.requests: list[httpx.Request] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/oauth/token":
            n = len(self.requests)
            token = fake_token(int(self.now), int(self.now) + 100, n)
            return httpx.Response(200, json={"access_token": token, "token_type": "DPoP"})
        if request.url.path == "/denied":
            return httpx.Response(
                401,
                json={
                    "type": "about:blank",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "the task is revoked",
                    "error": "invalid_token",
                },
            )
        return httpx.Response(200, json={"ok": True})


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def client(server: Server) -> TetherClient:
    http = httpx.Client(transport=httpx.MockTransport(server))
    return TetherClient("http://tether.test/", http=http, clock=server.clock)


def test_join_sends_a_token_exchange_with_a_dpop_proof(
    server: Server, client: TetherClient
) -> None:
    session = client.join("tjt_a.b", task_id="T-1", purpose="p", scope=["db-*", "crm"], lifetime=60)
    request = server.requests[0]
    form = dict(parse_qsl(request.content.decode()))
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "tjt_a.b",
        "subject_token_type": JOIN_TOKEN_TYPE,
        "task_id": "T-1",
        "task_purpose": "p",
        "scope": "db-* crm",
        "requested_lifetime": "60",
    }
    header, proof = unverified(request.headers["dpop"])
    assert (header["typ"], header["alg"], header["jwk"]["crv"]) == ("dpop+jwt", "EdDSA", "Ed25519")
    assert (proof["htm"], proof["htu"], proof["iat"]) == (
        "POST",
        "http://tether.test/oauth/token",
        1000,
    )
    assert "ath" not in proof
    assert session.claims["exp"] == 1100


def test_requests_carry_the_token_and_a_proof_for_the_url_without_query(
    server: Server, client: TetherClient
) -> None:
    session = client.join("tjt_a.b", task_id="T-1", purpose="p")
    session.request("get", "/v1/things?page=2#x", headers={"X-Trace": "1"})
    session.request("POST", "http://tether.test/v1/other", json={"a": 1})
    first, second = server.requests[1:]
    assert first.headers["authorization"] == f"DPoP {session.token}"
    assert first.headers["x-trace"] == "1"
    _, proof = unverified(first.headers["dpop"])
    assert (proof["htm"], proof["htu"]) == ("GET", "http://tether.test/v1/things")
    assert proof["ath"] == access_token_hash(session.token)
    _, again = unverified(second.headers["dpop"])
    assert again["jti"] != proof["jti"] and again["htm"] == "POST"


def test_renews_when_less_than_a_fifth_of_the_lifetime_is_left(
    server: Server, client: TetherClient
) -> None:
    session = client.join("tjt_a.b", task_id="T-1", purpose="p")
    first = session.token
    server.now += 79  # 21 s of 100 left: not yet
    session.request("GET", "/v1/whoami")
    assert session.token == first and len(server.requests) == 2
    server.now += 2  # 19 s left: renew first
    session.request("GET", "/v1/whoami")
    renewal = server.requests[2]
    form = dict(parse_qsl(renewal.content.decode()))
    assert (form["subject_token"], form["subject_token_type"], form["task_id"]) == (
        first,
        ACCESS_TOKEN_TYPE,
        "T-1",
    )
    assert unverified(renewal.headers["dpop"])[1]["ath"] == access_token_hash(first)
    assert session.token != first and session.claims["exp"] == int(server.now) + 100
    assert server.requests[3].headers["authorization"] == f"DPoP {session.token}"


def test_for_task_keeps_the_key_and_the_session(server: Server, client: TetherClient) -> None:
    session = client.join("tjt_a.b", task_id="T-1", purpose="p")
    other = session.for_task("T-2", "q", scope=["db-1"])
    form = dict(parse_qsl(server.requests[1].content.decode()))
    assert (form["task_id"], form["scope"], form["subject_token"]) == ("T-2", "db-1", session.token)
    assert other.key is session.key and other.token != session.token


def test_refusals_and_outages(server: Server, client: TetherClient) -> None:
    session = client.join("tjt_a.b", task_id="T-1", purpose="p")
    with pytest.raises(TetherRefused) as refused:
        session.request("GET", "/denied")
    assert (refused.value.status, refused.value.error, refused.value.detail) == (
        401,
        "invalid_token",
        "the task is revoked",
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with TetherClient(f"http://127.0.0.1:{port}") as offline, pytest.raises(TetherUnavailable):
        offline.join("tjt_a.b", task_id="T-1", purpose="p")


@pytest.mark.parametrize("token", ["", "a.b", "a.W10.c", "a.!!!.c"])
def test_malformed_tokens_from_the_server(token: str) -> None:
    with pytest.raises(TetherError):
        decode_claims(token)
