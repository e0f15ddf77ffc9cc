"""Red-team review s19 (identity), on a real ``tether serve`` and a real JWKS endpoint on
loopback: one-time join tokens under concurrency, workload joins and algorithm confusion,
a JWKS endpoint that answers slowly."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm

from tests.identity_e2e.test_e2e_serve import Cluster
from tests.test_serve import Node
from tether.identity import exchange as ex
from tether.identity import jose
from tether.identity.dpop import make_proof

K8S_ISS = "https://k8s.review.example"
KEY = ec.generate_private_key(ec.SECP256R1())
SUB = "system:serviceaccount:prod:billing"


class JwksEndpoint:
    """A real HTTP server on 127.0.0.1 serving the issuer's JWKS; ``pause`` > 0 sends it a
    byte at a time. Counts the requests."""

    def __init__(self) -> None:
        jwk = ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
        self.document = json.dumps({"keys": [{**jwk, "kid": "k8s-1", "use": "sig"}]}).encode()
        self.pause, self.requests, self.stop = 0.0, 0, threading.Event()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.requests += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(state.document)))
                self.end_headers()
                try:
                    if not state.pause:
                        self.wfile.write(state.document)
                        return
                    for byte in state.document:
                        if state.stop.wait(state.pause):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/keys"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


class ConfiguredCluster(Cluster):
    """A cluster whose nodes read a config file trusting the loopback Kubernetes issuer."""

    def serve_args(self) -> list[str]:
        return [*super().serve_args(), "--config", "tether.yaml"]

    def start(self) -> Node:
        """A node started, given a minute (a loaded machine starts it slowly)."""
        node = Node(self.serve_args(), self.root, self.env)
        self.nodes.append(node)
        node.wait_for_log("tether serving on", timeout=60)
        return node


@pytest.fixture
def endpoint() -> Iterator[JwksEndpoint]:
    made = JwksEndpoint()
    yield made
    made.close()


@pytest.fixture
def node(
    tmp_path: Path, tether_bin: Path, clean_env: dict[str, str], endpoint: JwksEndpoint
) -> Iterator[tuple[ConfiguredCluster, str]]:
    cluster = ConfiguredCluster(tmp_path, tether_bin, clean_env)
    config = {
        "identity": {
            "issuer": cluster.url,
            "workload_issuers": [
                {
                    "name": "cluster-a",
                    "kind": "kubernetes",
                    "issuer": K8S_ISS,
                    "audiences": ["tether"],
                    "jwks_url": endpoint.url,
                    "agents": {SUB: "billing"},
                }
            ],
        }
    }
    (tmp_path / "tether.yaml").write_text(json.dumps(config))  # JSON is YAML
    try:
        _, admin, _ = cluster.start_with_join_token("bot")
        made = cluster.cli("agent", "create", "billing", "--owner", "a", token=admin)
        assert made.returncode == 0, made.stderr
        yield cluster, admin
    finally:
        cluster.stop()


def form(subject: str, kind: str, task: str = "T-1") -> dict[str, str]:
    return {
        "grant_type": ex.GRANT_TYPE,
        "subject_token": subject,
        "subject_token_type": kind,
        "task_id": task,
        "task_purpose": "review",
    }


async def exchange(
    client: httpx.AsyncClient, url: str, data: dict[str, str], *, proof: str | None = None
) -> httpx.Response:
    if proof is None:
        proof = make_proof(ed25519.Ed25519PrivateKey.generate(), "POST", url, now=time.time())
    return await client.post(url, data=data, headers={"DPoP": proof}, timeout=60)


def k8s_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": K8S_ISS,
        "aud": ["tether"],
        "sub": SUB,
        "iat": now,
        "exp": now + 600,
        "kubernetes.io": {
            "namespace": "prod",
            "pod": {"name": "billing-7f9c", "uid": "p"},
            "serviceaccount": {"name": "billing", "uid": "s"},
        },
    }
    return {**claims, **overrides}


def signed(claims: dict[str, Any], *, kid: str = "k8s-1") -> str:
    return jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(signature)


def hs256_with_the_public_key(claims: dict[str, Any]) -> str:
    """The classic confusion: an HMAC keyed with the issuer's public key (PEM)."""
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "kid": "k8s-1"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def proof_at(url: str, iat: int) -> str:
    """A proof of a key of one's own whose ``iat`` is any integer (a 500 before, when it
    was too large for a float)."""
    key = ed25519.Ed25519PrivateKey.generate()
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jose.public_jwk(key)}
    claims = {"jti": "j-1", "htm": "POST", "htu": url, "iat": iat}
    return jose.encode_compact(header, claims, lambda data: jose.sign("EdDSA", key, data))


def test_twenty_concurrent_joins_with_one_join_token_give_one_token(
    node: tuple[ConfiguredCluster, str],
) -> None:
    cluster, admin = node
    minted = cluster.cli("agent", "join-token", "bot", token=admin)
    assert minted.returncode == 0, minted.stderr
    join = minted.stdout.strip()
    url = cluster.url + "/oauth/token"

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(
                *(exchange(client, url, form(join, ex.JOIN_TOKEN)) for _ in range(20))
            )

    answers = asyncio.run(race())
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [400] * 19, statuses
    assert {a.json()["error"] for a in answers if a.status_code == 400} == {"invalid_grant"}


def test_workload_joins_over_a_real_jwks_refuse_every_confusion(
    node: tuple[ConfiguredCluster, str], endpoint: JwksEndpoint
) -> None:
    cluster, _ = node
    url = cluster.url + "/oauth/token"
    now = int(time.time())
    refused = {
        "alg none": unsigned({"alg": "none", "kid": "k8s-1"}, k8s_claims()),
        "HS256 keyed with the public key": hs256_with_the_public_key(k8s_claims()),
        "no kid": jwt.encode(k8s_claims(), KEY, algorithm="ES256"),
        "exp as a string": signed(k8s_claims(exp=str(now + 600))),
        "aud as a number": signed(k8s_claims(aud=7)),
        "aud empty": signed(k8s_claims(aud="")),
        "iss with a trailing slash": signed(k8s_claims(iss=K8S_ISS + "/")),
        "iss upper-cased": signed(k8s_claims(iss=K8S_ISS.upper())),
        "expired past the leeway": signed(k8s_claims(iat=now - 700, exp=now - 61)),
        "not yet valid": signed(k8s_claims(nbf=now + 120)),
        "exp too large for a float": signed(k8s_claims(exp=10**400)),
        "sub by prefix": signed(k8s_claims(sub=SUB + "x")),
    }

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            good = await exchange(client, url, form(signed(k8s_claims()), ex.JWT))
            assert good.status_code == 200, good.text
            for what, token in refused.items():
                answer = await exchange(client, url, form(token, ex.JWT))
                assert answer.status_code == 400, (what, answer.text)
                assert answer.json()["error"] == "invalid_grant", (what, answer.text)
            huge_iat = await exchange(
                client, url, form(signed(k8s_claims()), ex.JWT), proof=proof_at(url, 10**400)
            )
            assert huge_iat.status_code == 400, huge_iat.text
            assert huge_iat.json()["error"] == "invalid_dpop_proof", huge_iat.text
            fetched = endpoint.requests
            for i in range(30):  # made-up kids: the issuer is not asked once per token
                answer = await exchange(
                    client, url, form(signed(k8s_claims(), kid=f"x{i}"), ex.JWT)
                )
                assert answer.status_code == 400, answer.text
            assert endpoint.requests - fetched <= 1

    asyncio.run(run())


def test_a_jwks_endpoint_sending_a_byte_at_a_time_is_refused_in_seconds(
    node: tuple[ConfiguredCluster, str], endpoint: JwksEndpoint
) -> None:
    """Before, the node's JWKS fetch waited as long as each byte came within 5 s: the join
    hung (and every other join of the issuer behind it)."""
    cluster, _ = node
    endpoint.pause = 0.5  # a document of about 200 bytes: 100 s
    url = cluster.url + "/oauth/token"

    async def run() -> tuple[httpx.Response, float]:
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            answer = await exchange(client, url, form(signed(k8s_claims()), ex.JWT))
            return answer, time.monotonic() - started

    answer, took = asyncio.run(run())
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text
    assert "issuer keys unavailable" in answer.json()["error_description"]
    assert took < 15, took


# --- a secret sent as a parameter name is not copied into the refusal -------------------------


@pytest.mark.parametrize("twice", [False, True], ids=["unknown", "given twice"])
async def test_a_join_token_sent_as_a_parameter_name_is_not_copied_anywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, twice: bool
) -> None:
    """The token endpoint's reason is audited and logged, and documented as a text Tether
    wrote: before, an unknown parameter's name (any length, newlines included) or 40
    characters of one given twice were copied into it, and into the answer."""
    from tests.identity_e2e.test_api_identity import serving_api
    from tether.api.oauth import AUDIT_LOGGER

    secret = "tjt_0123456789abcdef.S3cretS3cretS3cretS3cretS3cretS3cretS3cretS"
    body = f"grant_type={ex.GRANT_TYPE}&{secret}=&task_id=T-1"
    if twice:
        body = f"grant_type={ex.GRANT_TYPE}&{secret}=1&{secret}=2"
    async for api in serving_api(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}"):
        with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
            answer = await api.http.post(
                "/oauth/token",
                content=body.encode(),
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"
        assert "S3cret" not in answer.text
        assert "S3cret" not in caplog.text
        records = [r.audit for r in caplog.records if hasattr(r, "audit")]
        assert records and all("S3cret" not in json.dumps(r) for r in records)
        assert "parameter" in answer.json()["error_description"]


# --- DPoP replays across nodes whose clocks differ by a few seconds ---------------------------


async def test_a_proof_pruned_by_one_node_is_still_a_replay_on_a_node_whose_clock_is_behind(
    pg_fresh_url: str,
) -> None:
    """Before, a node's watcher deleted a replay row the second it expired by its own clock:
    a node whose clock is 5 s behind still accepts the proof for 4 s more, and found nothing
    in the shared table: the proof, used on the first node, was accepted again on it."""
    from tests.identity_e2e.conftest import RESOURCE, Clock, Stack, build_service, join_form
    from tether.crypto.envelope import EnvelopeCipher
    from tether.crypto.masterkey import MasterKey
    from tether.identity.errors import ReplayDetected
    from tether.identity.issued import Presented
    from tether.store import Store

    store = await Store.open(pg_fresh_url)
    try:
        ahead = Clock()
        behind = Clock(ahead.at - timedelta(seconds=5))
        cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
        first = Stack(store, ahead, cipher, await build_service(store, ahead, cipher))
        second = await build_service(store, behind, cipher)
        agent = await first.new_agent("bot")
        text, _ = await first.service.create_join_token(agent.id)
        issued = await first.exchange(agent, join_form(text))
        proof = first.proof(agent, token=issued.token)
        presented = Presented(issued.token, "GET", RESOURCE, proof)
        assert (await first.service.authenticate(presented)).sub == "bot"
        ahead.advance(62)
        behind.advance(62)  # 57 s after the proof by its clock: not stale there yet
        await first.service.prune_replays()
        with pytest.raises(ReplayDetected):
            await second.authenticate(presented)
    finally:
        await store.close()


# --- the token endpoint records a proof's jti only once the subject token proved something ----


async def test_a_proof_sent_with_a_made_up_join_token_fills_no_replay_cache(
    tmp_path: Path,
) -> None:
    """Anyone can sign a proof with a key of their own. Before, the join and workload grants
    recorded the proof's jti before looking at the join or workload token, so made-up join
    tokens, each with a fresh proof, filled the node's replay cache (100,000 entries a
    minute; full, it answers 503 to every agent): the replay module's "only holders of valid
    tokens can add entries" did not hold there."""
    from tests.identity_e2e.conftest import Agent, Clock, Stack, build_service, join_form
    from tether.crypto.envelope import EnvelopeCipher
    from tether.crypto.masterkey import MasterKey
    from tether.store import Store

    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    try:
        clock = Clock()
        cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
        stack = Stack(store, clock, cipher, await build_service(store, clock, cipher))
        cache = stack.service.replay_cache
        before = len(cache)
        stranger = Agent("stranger")
        for i in range(20):
            with pytest.raises(ex.ExchangeError):
                await stack.exchange(stranger, join_form(f"tjt_{i:016x}.made-up"))
            with pytest.raises(ex.ExchangeError):
                await stack.exchange(stranger, {**join_form("x.y.z"), "subject_token_type": ex.JWT})
        assert len(cache) == before
        agent = await stack.new_agent("bot")  # a real join still records its proof
        await stack.join(agent)
        assert len(cache) == before + 1
    finally:
        await store.close()
