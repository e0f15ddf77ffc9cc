"""The front-end kernel: agent labels cache (TTL, single-flight) and the policy request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.crypto.masterkey import MasterKey
from tether.crypto.seal import RowSealer
from tether.identity.claims import Actor, Claims, Confirmation, Runtime, Task
from tether.policy.loader import PolicySource, load_policies
from tether.proxy.core import AgentLabels, policy_request, subject_of
from tether.store import Store
from tether.store import agents as ag
from tether.store.identity import AGENTS, agent_seal_columns
from tether.store.schema import agents

NOW = datetime(2026, 11, 29, tzinfo=UTC)
SEALER = RowSealer(MasterKey(bytes(range(32)), "test"))


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    async with store.engine.begin() as conn:
        await ag.create_agent(
            conn, SEALER, id="bot", owner="alice", now=NOW, labels={"team": "ops"}
        )
    yield store.engine
    await store.close()


def count_selects(engine: AsyncEngine) -> list[str]:
    seen: list[str] = []

    def on_execute(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "FROM agents" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    return seen


async def test_concurrent_misses_share_one_read(engine: AsyncEngine) -> None:
    reads = count_selects(engine)
    labels = AgentLabels(engine, SEALER)
    results = await asyncio.gather(*(labels.get("bot") for _ in range(50)))
    assert all(dict(r) == {"team": "ops"} for r in results)
    assert len(reads) == 1


async def test_labels_expire_after_ttl(engine: AsyncEngine) -> None:
    clock = [0.0]
    labels = AgentLabels(engine, SEALER, ttl=1.0, clock=lambda: clock[0])
    assert dict(await labels.get("bot")) == {"team": "ops"}
    async with engine.begin() as conn:
        row = {"id": "bot", "owner": "alice", "labels": {"team": "billing"}, "state": "active",
               "revision": 2}  # fmt: skip
        seal = SEALER.seal(AGENTS, agent_seal_columns(row))  # a change Tether itself made
        await conn.execute(update(agents).values(labels=row["labels"], revision=2, seal=seal))
    clock[0] = 0.5
    assert dict(await labels.get("bot")) == {"team": "ops"}  # cached
    clock[0] = 1.5
    assert labels.cached("bot") == (False, None)  # the broker's peek misses as get() reads
    assert dict(await labels.get("bot")) == {"team": "billing"}
    hit, cached = labels.cached("bot")
    assert hit and cached is not None and dict(cached) == {"team": "billing"}


async def test_unknown_agent_has_no_labels(engine: AsyncEngine) -> None:
    assert dict(await AgentLabels(engine, SEALER).get("nobody")) == {}


async def test_a_cancelled_waiter_does_not_cancel_the_shared_read(engine: AsyncEngine) -> None:
    labels = AgentLabels(engine, SEALER)
    first = asyncio.ensure_future(labels.get("bot"))
    second = asyncio.ensure_future(labels.get("bot"))
    await asyncio.sleep(0)
    first.cancel()
    assert dict(await second) == {"team": "ops"}
    with pytest.raises(asyncio.CancelledError):
        await first


def claims(*, delegated: bool) -> Claims:
    return Claims(
        iss="http://t", aud="http://t", sub="alice" if delegated else "bot", jti="j1",
        iat=0, nbf=0, exp=10, task=Task("T-1", "close"), scope=("web-*",),
        runtime=Runtime("rt-1", {"env": "prod"}), cnf=Confirmation(jkt="x"),
        act=Actor("bot") if delegated else None, agent="bot" if delegated else None,
        groups=("finance",) if delegated else (),
    )  # fmt: skip


class _Target:
    name = "web-1"
    labels = MappingProxyType({"env": "prod"})


def test_policy_request_carries_verified_identity_only() -> None:
    action = {"http": {"method": "GET", "path": "/x"}}
    request = policy_request(
        claims(delegated=True), {"team": "ops"}, _Target(), action,  # type: ignore[arg-type]
        source_ip="10.0.0.1", approvals=["r1"],
    )  # fmt: skip
    assert request["agent"] == {"id": "bot", "labels": {"team": "ops"}}
    assert request["delegation"] == {"user": "alice", "groups": ["finance"]}
    assert request["task"] == {"id": "T-1", "purpose": "close"}
    assert request["scope"] == {"targets": ["web-*"]}
    assert request["approvals"] == ["r1"]
    subject = subject_of(claims(delegated=True), source_ip="10.0.0.1")
    assert (subject.agent, subject.user, subject.actor_chain) == ("bot", "alice", ("bot",))


def test_policy_request_is_a_valid_spec_request_and_scope_applies() -> None:
    policies = load_policies([PolicySource("p.yaml", "rules: []\n")])
    request = policy_request(
        claims(delegated=False), {}, _Target(), {"http": {"method": "GET", "path": "/x"}},  # type: ignore[arg-type]
    )  # fmt: skip
    assert "delegation" not in request
    assert policies.decide(request).reason == "default-deny"
    request["target"]["name"] = "db-1"  # outside the token's scope
    assert policies.decide(request).reason == "out-of-scope"


async def test_labels_of_a_row_changed_outside_tether_are_refused(engine: AsyncEngine) -> None:
    # Labels a database writer gave the agent could match a broader rule: no labels at all
    # (as for an unknown agent) would be no better when a deny rule matches on a label.
    async with engine.begin() as conn:
        await conn.execute(update(agents).values(labels={"team": "admins"}))
    with pytest.raises(ag.AgentUnverified):
        await AgentLabels(engine, SEALER).get("bot")
