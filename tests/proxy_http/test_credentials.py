"""Upstream TLS and credential injection: CA bundles, the opt-out, OAuth 2.0 client
credentials against a real token endpoint, secret rotation mid-traffic, and the credential
never reaching the agent."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from .certs import make_pki
from .conftest import Agent, Harness
from .upstream import Upstream


@pytest.fixture
def tls_upstream() -> Iterator[tuple[Upstream, str]]:
    pki = make_pki()
    server = Upstream(tls=pki.server_context()).start()
    yield server, pki.ca_pem
    server.stop()


def _get(agent: Agent, url: str) -> httpx.Response:
    return httpx.get(url, headers=agent.headers("GET", url), timeout=30)


def test_upstream_tls_is_verified(
    harness: Harness, tls_upstream: tuple[Upstream, str], caplog: pytest.LogCaptureFixture
) -> None:
    server, ca = tls_upstream
    harness.add_target("good", base_url=server.url, ca_bundle=ca)
    harness.add_target("unknown-ca", base_url=server.url)
    harness.add_target("other-ca", base_url=server.url, ca_bundle=make_pki("other").ca_pem)
    harness.add_target("optout", base_url=server.url, tls_verify=False)
    agent = harness.agent()
    assert _get(agent, f"{harness.url}/t/good/v1/x").status_code == 200
    for name in ("unknown-ca", "other-ca"):
        refused = _get(agent, f"{harness.url}/t/{name}/v1/x")
        assert refused.status_code == 502 and "TLS" in refused.json()["detail"], name
    assert len(server.seen) == 1
    with caplog.at_level(logging.WARNING, logger="tether.proxy.http.broker"):
        assert _get(agent, f"{harness.url}/t/optout/v1/x").status_code == 200
    assert "verification is OFF" in caplog.text
    events = {e.target: e for e in harness.exchanges(4)}
    assert events["optout"].detail["tls_verify"] is False
    assert "tls_verify" not in events["good"].detail


def test_oauth2_client_credentials(harness: Harness, upstream: Upstream) -> None:
    upstream.oauth_expires_in = 11  # refreshed 10 s before expiry: after about 1 s
    harness.put_secret("oauth-secret", b"client-secret-1")
    harness.add_target("oauth", base_url=upstream.url, credential={
        "type": "oauth2_client_credentials", "token_url": upstream.url + "/oauth/token",
        "client_id": "client-1", "secret": "oauth-secret", "scope": "read",
    })  # fmt: skip
    agent = harness.agent()
    url = f"{harness.url}/t/oauth/protected"
    assert _get(agent, url).status_code == 200
    assert _get(agent, url).status_code == 200
    assert len(upstream.issued) == 1  # cached
    token_request = next(s for s in upstream.seen if s.target == "/oauth/token")
    assert b"scope=read" in token_request.body
    time.sleep(1.2)
    assert _get(agent, url).status_code == 200
    assert len(upstream.issued) == 2  # refreshed before expiry

    # Single flight: a burst that finds no usable token makes one fetch.
    upstream.oauth_delay = 0.3
    upstream.oauth_expires_in = 3600
    time.sleep(1.2)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: _get(agent, url).status_code, range(8)))
    assert statuses == [200] * 8
    assert len(upstream.issued) == 3

    # The target refuses the token: it is forgotten, and the next request fetches anew.
    upstream.issued.append("revoked-by-the-target")
    assert _get(agent, url).status_code == 401
    assert _get(agent, url).status_code == 200
    assert len(upstream.issued) == 5

    # A rotated client secret is used by the next fetch; a wrong one is a 502.
    harness.put_secret("oauth-secret", b"wrong")
    upstream.issued.append("force-a-fetch")
    refused = _get(agent, url)
    assert refused.status_code == 502
    assert "wrong" not in refused.text and "client-secret" not in refused.text
    upstream.oauth_client = ("client-1", "client-secret-2")
    harness.put_secret("oauth-secret", b"client-secret-2")
    assert _get(agent, url).status_code == 200
    trail = repr(harness.events())
    assert "client-secret" not in trail and "upstream-token" not in trail


def test_client_secret_post(harness: Harness, upstream: Upstream) -> None:
    harness.put_secret("s", b"client-secret-1")
    harness.add_target("oauth", base_url=upstream.url, credential={
        "type": "oauth2_client_credentials", "token_url": upstream.url + "/oauth/token",
        "client_id": "client-1", "secret": "s", "auth_method": "client_secret_post",
    })  # fmt: skip
    agent = harness.agent()
    assert _get(agent, f"{harness.url}/t/oauth/protected").status_code == 200
    token_request = next(s for s in upstream.seen if s.target == "/oauth/token")
    assert token_request.header("authorization") == []
    assert b"client_secret=client-secret-1" in token_request.body


@pytest.mark.parametrize(
    ("credential", "expect"),
    [
        ({"type": "basic", "username": "svc", "secret": "k"}, ("authorization", "Basic ")),
        ({"type": "query", "secret": "k", "param": "api_key"}, ("target", "api_key=")),
    ],
)
def test_basic_and_query(
    harness: Harness, upstream: Upstream, credential: dict[str, str], expect: tuple[str, str]
) -> None:
    harness.put_secret("k", b"p@ss word&=")
    harness.add_target("api", base_url=upstream.url, credential=credential)
    agent = harness.agent()
    url = f"{harness.url}/t/api/v1/x"
    response = httpx.get(url + "?api_key=forged&a=1", headers=agent.headers("GET", url))
    assert response.status_code == 200
    seen = upstream.seen[-1]
    if expect[0] == "target":
        assert seen.target == "/v1/x?a=1&api_key=p%40ss%20word%26%3D"
        assert "forged" not in seen.target
    else:
        assert seen.header("authorization") == ["Basic c3ZjOnBAc3Mgd29yZCY9"]
    assert "p%40ss" not in repr(response.headers) and "c3Zj" not in repr(response.headers)
    assert "p@ss" not in repr(harness.events()) and "c3Zj" not in repr(harness.events())


def test_credential_never_reaches_the_agent(harness: Harness, upstream: Upstream) -> None:
    harness.put_secret("tok", b"very-secret-token")
    harness.add_target("api", base_url=upstream.url, credential={"type": "bearer", "secret": "tok"})
    agent = harness.agent()
    url = f"{harness.url}/t/api/leak"
    leaked = _get(agent, url)
    assert leaked.status_code == 200
    assert upstream.seen[-1].header("authorization") == ["Bearer very-secret-token"]
    assert "x-leak" not in leaked.headers
    assert "very-secret-token" not in repr(leaked.headers) + leaked.text
    harness.put_secret("tok", b"bad\r\nX-Smuggled: 1")
    refused = _get(agent, f"{harness.url}/t/api/v1/x")
    assert refused.status_code == 502 and "very-secret" not in refused.text
    assert upstream.seen[-1].target == "/leak"  # the bad secret was never sent
    trail = repr(harness.events())
    assert "very-secret-token" not in trail and "X-Smuggled" not in trail


def test_secret_rotation_mid_traffic(harness: Harness, upstream: Upstream) -> None:
    harness.put_secret("key", b"old-value")
    harness.add_target("api", base_url=upstream.url, credential={
        "type": "header", "secret": "key", "header_name": "X-Api-Key"})  # fmt: skip
    agent = harness.agent()
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                url = f"{harness.url}/t/api/v1/n"
                statuses.append(client.get(url, headers=agent.headers("GET", url)).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(0.5)
    harness.put_secret("key", b"new-value")
    rotated_at = len(upstream.seen)
    time.sleep(0.5)
    stop.set()
    worker.join()
    values = [s.header("x-api-key")[0] for s in upstream.seen]
    assert set(statuses) == {200} and len(values) > 4
    assert values[0] == "old-value" and values[-1] == "new-value"
    first_new = values.index("new-value")
    # The one client sends one request at a time: at most the request in flight while the
    # secret was rotated (it read the old value) arrives after it; the next one is new.
    assert first_new <= rotated_at + 1
    assert set(values[first_new:]) == {"new-value"}
