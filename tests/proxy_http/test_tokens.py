"""Token attacks on the wire: each is a 401 with a ``WWW-Authenticate: DPoP`` error, audited,
and nothing reaches the target. Revocation ends live traffic too."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.identity.claims import Confirmation, Runtime, Task
from tether.identity.dpop import make_proof
from tether.identity.jose import public_jwk
from tether.identity.keys import jwk_thumbprint
from tether.identity.tokens import TokenIssuer

from .conftest import Agent, Harness
from .upstream import Upstream


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, Upstream, Agent]]:
    server = Upstream().start()
    node = Harness(tmp_path_factory.mktemp("tokens"))
    node.add_target("api", base_url=server.url)
    yield node, server, node.agent()
    node.stop()
    server.stop()


def _get(agent: Agent, url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers={**agent.headers("GET", url), **headers})


def _forged(harness: Harness, agent: Agent, *, clock_offset: float = 0, audience: str = "") -> str:
    ring = harness.identity.keys.ring
    settings = harness.identity.settings
    issuer = TokenIssuer(
        ring, issuer=settings.issuer, audience=audience or settings.audience,
        clock=lambda: time.time() + clock_offset,
    )  # fmt: skip
    token, _ = issuer.issue(
        subject=agent.id, task=Task("T-1", "tests"), scope=["*"],
        runtime=Runtime("join/x", {}), cnf=Confirmation(jkt=jwk_thumbprint(public_jwk(agent.key))),
    )  # fmt: skip
    return token


def _with(url: str, token: str, proof: str) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})


def _challenge(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.headers["www-authenticate"]


def test_token_attacks(shared: tuple[Harness, Upstream, Agent]) -> None:
    harness, upstream, agent = shared
    upstream.seen.clear()
    url = f"{harness.url}/t/api/v1/items"

    expired = _forged(harness, agent, clock_offset=-7200)
    response = _with(url, expired, agent.proof("GET", url, token=expired))
    assert 'error="invalid_token"' in _challenge(response)
    assert "expired" in response.json()["detail"]

    wrong_aud = _forged(harness, agent, audience="someone-else")
    response = _with(url, wrong_aud, agent.proof("GET", url, token=wrong_aud))
    assert 'error="invalid_token"' in _challenge(response)

    header, claims, _ = agent.token.split(".")
    none_header = (
        base64.urlsafe_b64encode(
            json.dumps(
                {**json.loads(base64.urlsafe_b64decode(header + "==")), "alg": "none"}
            ).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    alg_none = f"{none_header}.{claims}."
    response = _with(url, alg_none, agent.proof("GET", url, token=alg_none))
    assert 'error="invalid_token"' in _challenge(response)

    proof = agent.proof("GET", url)
    first = httpx.get(url, headers={"Authorization": f"DPoP {agent.token}", "DPoP": proof})
    assert first.status_code == 200
    replay = httpx.get(url, headers={"Authorization": f"DPoP {agent.token}", "DPoP": proof})
    assert 'error="invalid_dpop_proof"' in _challenge(replay)

    other_url = f"{harness.url}/t/api/v1/other"
    response = httpx.get(url, headers={"Authorization": f"DPoP {agent.token}",
                                       "DPoP": agent.proof("GET", other_url)})  # fmt: skip
    assert 'error="invalid_dpop_proof"' in _challenge(response)
    response = httpx.get(url, headers={"Authorization": f"DPoP {agent.token}",
                                       "DPoP": agent.proof("POST", url)})  # fmt: skip
    assert 'error="invalid_dpop_proof"' in _challenge(response)

    thief = Ed25519PrivateKey.generate()  # a stolen token, without the agent's key
    stolen = make_proof(thief, "GET", url, now=time.time(), access_token=agent.token)
    response = httpx.get(url, headers={"Authorization": f"DPoP {agent.token}", "DPoP": stolen})
    assert "invalid" in _challenge(response)
    response = httpx.get(url, headers={"Authorization": f"DPoP {agent.token}"})
    assert 'error="invalid_dpop_proof"' in _challenge(response)
    response = httpx.get(url, headers={"Authorization": f"Bearer {agent.token}",
                                       "DPoP": agent.proof("GET", url)})  # fmt: skip
    assert 'error="invalid_token"' in _challenge(response)

    assert len(upstream.seen) == 1  # only the one good request
    refused = harness.events("token.refused", target="api")
    assert len(refused) >= 8 and all(e.decision == "deny" for e in refused)
    assert agent.token not in repr(refused)


def test_revocation_refuses_the_next_request(shared: tuple[Harness, Upstream, Agent]) -> None:
    harness, _upstream, _ = shared
    agent = harness.agent(task="T-revoke-1")
    url = f"{harness.url}/t/api/v1/items"
    assert _get(agent, url).status_code == 200
    harness.run(harness.identity.revoke("task", "T-revoke-1", reason="incident", by="test"))
    response = _get(agent, url)
    assert 'error="invalid_token"' in _challenge(response)
    assert "revoked" in response.json()["detail"]


def test_revocation_ends_a_transfer_in_flight(shared: tuple[Harness, Upstream, Agent]) -> None:
    harness, _upstream, _ = shared
    agent = harness.agent(task="T-revoke-2")
    url = f"{harness.url}/t/api/big"
    received = 0
    revoker = threading.Timer(
        0.5, lambda: harness.run(harness.identity.revoke("task", "T-revoke-2", reason="x", by="t"))
    )
    started = time.monotonic()
    headers = agent.headers("GET", url)
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream("GET", url + "?n=2000000000", headers=headers) as response,
    ):
        assert response.status_code == 200
        revoker.start()
        for chunk in response.iter_raw():
            received += len(chunk)
            time.sleep(0.001)
    assert time.monotonic() - started < 10
    assert 0 < received < 2_000_000_000
    # This task's own exchange: the shared harness holds other tests' exchanges with "api",
    # and this one is appended after the transfer ended, maybe after the loop above.
    (exchange,) = harness.exchanges(1, target="api", task="T-revoke-2")
    assert "no longer valid" in exchange.detail["error"]
