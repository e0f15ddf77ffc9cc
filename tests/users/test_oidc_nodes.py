"""Pending OIDC sign-ins live in the shared database: a sign-in started on one node completes
on another and is collected on either, on SQLite and PostgreSQL, against a real provider on
loopback; a state is spent once (a replay fails on every node, two racing callbacks make
one sign-in), expires, and the table holds neither the verifier nor the token in clear."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.approvals.helpers import Clock, fresh_cipher
from tests.users.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider
from tether.identity.jwks import JwksSource
from tether.identity.workload import IssuerConfig, TrustedIssuers
from tether.store import Store
from tether.users import logins
from tether.users.config import OidcLoginConfig
from tether.users.oidc import LOGIN_TTL, OidcLogin, OidcLoginError, Verified
from tether.users.service import UserService

REDIRECT = "https://tether.example/v1/login/oidc/callback"


@dataclass
class Node:
    store: Store
    login: OidcLogin


@dataclass
class Cluster:
    provider: Provider
    clock: Clock
    a: Node
    b: Node


def issuers_of(issuers: TrustedIssuers) -> Callable[[], TrustedIssuers]:
    return lambda: issuers


@pytest.fixture
async def cluster(store_url: str) -> AsyncIterator[Cluster]:
    sock = socket.create_server(("127.0.0.1", 0))
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    clock = Clock()
    idp = Provider(issuer, clock)
    server = uvicorn.Server(uvicorn.Config(idp, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    trusted = IssuerConfig(
        name="corp", issuer=issuer, audiences=[CLIENT_ID], kind="oidc",
        jwks=JwksSource(url=issuer + "/jwks"), user_claim="preferred_username",
    )  # fmt: skip
    config = OidcLoginConfig(
        issuer=issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,  # type: ignore[arg-type]
        roles={"sre": ["approver"]},
    )  # fmt: skip
    nodes = []
    cipher = fresh_cipher()  # one master key for both nodes
    for _name in ("a", "b"):  # two nodes: their own engine, services and issuer caches
        store = await Store.open(store_url)
        issuers = TrustedIssuers.from_configs([trusted], clock=clock)
        users = UserService(store.engine, cipher, clock=clock)
        login = OidcLogin(config, issuers_of(issuers), users, redirect_uri=REDIRECT, clock=clock)
        nodes.append(Node(store, login))
    try:
        yield Cluster(idp, clock, nodes[0], nodes[1])
    finally:
        for node in nodes:
            await node.store.close()
        server.should_exit = True
        await task


async def authorize(url: str) -> tuple[str, str]:
    """The browser at the provider: the code and state it is sent back with."""
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        redirect = await browser.get(url)
    assert redirect.status_code == 302
    params = httpx.URL(redirect.headers["location"]).params
    return params["code"], params["state"]


async def test_a_sign_in_started_on_one_node_completes_on_another(cluster: Cluster) -> None:
    url, poll_id = await cluster.a.login.start()
    assert await cluster.b.login.poll(poll_id, 0) is None  # known to every node, pending
    code, state = await authorize(url)
    verified = await cluster.b.login.callback(code, state)  # the callback reaches node b
    assert verified.user == "alice"
    assert await cluster.b.login.users.find("alice") is None  # recorded only once confirmed
    assert await cluster.a.login.poll(poll_id, 0) is None  # not before the confirmation
    confirmed = await cluster.a.login.confirm(state, verified.confirm)  # either node
    assert confirmed.created and confirmed.user.roles == frozenset({"approver"})

    for node in (cluster.b, cluster.a):  # a replayed state fails on every node
        with pytest.raises(OidcLoginError, match="unknown or expired"):
            await node.login.callback(code, state)
    assert cluster.provider.token_requests == 1  # refused before reaching the provider

    result = await cluster.a.login.poll(poll_id, 5)  # the CLI polls the node it started on
    assert result is not None and result.token.startswith("tpt_") and result.user.id == "alice"
    assert result.record.user_id == "alice"
    for node in (cluster.a, cluster.b):  # collected once
        with pytest.raises(KeyError):
            await node.login.poll(poll_id, 0)
    assert await cluster.b.login.users.authenticate(result.token) is not None


async def test_a_poll_waiting_on_one_node_sees_a_callback_on_another(cluster: Cluster) -> None:
    url, poll_id = await cluster.a.login.start()
    waiting = asyncio.create_task(cluster.a.login.poll(poll_id, 20))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    code, state = await authorize(url)
    verified = await cluster.b.login.callback(code, state)
    await cluster.b.login.confirm(state, verified.confirm)
    result = await asyncio.wait_for(waiting, 5)
    assert result is not None and result.user.id == "alice"


async def test_racing_callbacks_with_one_state_make_one_sign_in(cluster: Cluster) -> None:
    url, poll_id = await cluster.a.login.start()
    code, state = await authorize(url)
    outcomes = await asyncio.gather(
        cluster.a.login.callback(code, state),
        cluster.b.login.callback(code, state),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, OidcLoginError)]
    assert len(refused) == 1 and "unknown or expired" in str(refused[0])
    assert cluster.provider.token_requests == 1
    (verified,) = [o for o in outcomes if isinstance(o, Verified)]
    confirmed = await asyncio.gather(
        cluster.a.login.confirm(state, verified.confirm),
        cluster.b.login.confirm(state, verified.confirm),
        return_exceptions=True,
    )  # two racing confirmations make one token
    assert sum(isinstance(o, OidcLoginError) for o in confirmed) == 1
    assert await cluster.b.login.poll(poll_id, 5) is not None


async def test_a_state_expires(cluster: Cluster) -> None:
    url, poll_id = await cluster.a.login.start()
    code, state = await authorize(url)
    cluster.clock.advance(LOGIN_TTL + 1)
    with pytest.raises(OidcLoginError, match="unknown or expired"):
        await cluster.b.login.callback(code, state)
    with pytest.raises(KeyError):
        await cluster.a.login.poll(poll_id, 0)
    await cluster.a.login.start()  # starting prunes the expired row
    async with cluster.a.store.engine.connect() as conn:
        hashes = list(await conn.scalars(select(logins.oidc_logins.c.state_hash)))
    assert logins.lookup(state) not in hashes and len(hashes) == 1


async def test_the_table_holds_no_secret_in_clear(cluster: Cluster) -> None:
    url, poll_id = await cluster.a.login.start()
    code, state = await authorize(url)
    verifier_query = httpx.URL(url).params
    async with cluster.a.store.engine.connect() as conn:
        (before,) = (await conn.execute(select(logins.oidc_logins))).mappings().all()
    verified = await cluster.b.login.callback(code, state)
    async with cluster.a.store.engine.connect() as conn:
        (waiting,) = (await conn.execute(select(logins.oidc_logins))).mappings().all()
    await cluster.b.login.confirm(state, verified.confirm)
    async with cluster.a.store.engine.connect() as conn:
        (after,) = (await conn.execute(select(logins.oidc_logins))).mappings().all()
    dumped = b"".join(repr(dict(row)).encode() for row in (before, waiting, after))
    for secret in (state, poll_id, verifier_query["nonce"], verified.confirm):
        assert secret.encode() not in dumped
    assert b"tpt_" not in dumped and b"alice" not in repr(dict(waiting)).encode()
    assert after["sealed_start"] == b""  # the verifier, then the confirmation, erased
    result = await cluster.a.login.poll(poll_id, 0)
    assert result is not None and result.token.encode() not in dumped


secrets_ = st.text(min_size=1, max_size=64)


@settings(max_examples=60, deadline=None)
@given(secret=secrets_, other=secrets_, plaintext=st.binary(max_size=64))
def test_sealed_values_open_only_with_their_secret(
    secret: str, other: str, plaintext: bytes
) -> None:
    sealed = logins.seal(secret, plaintext)
    assert logins.unseal(secret, sealed) == plaintext
    if other != secret:
        with pytest.raises(logins.SealError):
            logins.unseal(other, sealed)


@settings(max_examples=80, deadline=None)
@given(secret=secrets_, junk=st.binary(max_size=80))
def test_unsealing_junk_never_crashes(secret: str, junk: bytes) -> None:
    with pytest.raises(logins.SealError):
        logins.unseal(secret, junk)
