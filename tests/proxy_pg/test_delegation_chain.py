"""A PostgreSQL session of a delegation chain is decided for every user of the chain.

alice delegates to ``bot``; that token is the actor token of bob's delegation. The session
logs in with bob's chained token; each statement is decided for bob and for alice, each with
their own groups (the session's decision cache included). Real broker, real PostgreSQL.

Before the fix the session's request named bob only: alice's deny rule did not apply.
"""

from __future__ import annotations

import time

import jwt

from tests.identity_e2e.conftest import IDP_ISS, USER_KEY
from tether.identity import exchange as ex
from tether.identity.dpop import make_proof

from .conftest import AgentKey, Broker
from .wire import Wire, errors, rows, status

CHAIN_RULES = """
rules:
  - id: agent-reads
    effect: allow
    agents: [bot]
    sql: {statements: [select, set], tables: ["public.*", "pg_catalog.*"]}
  - id: finance-reads
    effect: allow
    groups: [finance]
    sql: {statements: [select, set], tables: ["public.*", "pg_catalog.*"]}
  - id: alice-no-items
    effect: deny
    users: [alice]
    sql: {statements: ["*"], tables: ["public.items"]}
"""


async def delegate(broker: Broker, actor: AgentKey, user: str, groups: list[str]) -> AgentKey:
    now = int(time.time())
    body = {"iss": IDP_ISS, "aud": "tether", "sub": user, "iat": now, "exp": now + 600}
    id_token = jwt.encode(
        {**body, "groups": groups}, USER_KEY, algorithm="EdDSA", headers={"kid": "idp-1"}
    )
    form = {
        "grant_type": ex.GRANT_TYPE, "subject_token": id_token,
        "subject_token_type": ex.ID_TOKEN, "actor_token": actor.token,
        "actor_token_type": ex.ACCESS_TOKEN, "task_id": "T-1", "task_purpose": "testing",
    }  # fmt: skip
    url = "http://tether/oauth/token"
    proof = make_proof(actor.key, "POST", url, now=time.time(), access_token=actor.token)
    issued = await broker.identity.exchange(form, dpop=proof, url=url, address="127.0.0.1")
    return AgentKey(actor.id, actor.key, issued.token, issued.claims)


async def test_a_chained_session_is_decided_for_each_user(broker: Broker) -> None:
    broker.set_policy(CHAIN_RULES)
    bot = await broker.agent()
    for_alice = await delegate(broker, bot, "alice", ["finance"])
    chained = await delegate(broker, for_alice, "bob", ["finance"])
    assert chained.claims.delegators == ("bob", "alice")
    ops_alice = await delegate(
        broker, await delegate(broker, bot, "alice", ["ops"]), "bob", ["finance"]
    )

    wire = await Wire.open(broker.port)
    frames = await wire.login(broker.password(chained))
    assert status(frames) == "I", errors(frames)
    assert rows(await wire.query("SELECT 1")) == [["1"]]  # (a) both allowed
    for _ in range(2):  # (b) alice's deny rule, decided and then from the session's cache
        (error,) = errors(await wire.query("SELECT name FROM items WHERE id = 1"))
        assert error.sqlstate == "42501"
        assert "delegation-denied" in str(error.get("M")) + str(error.get("D"))
    wire.close()

    wire = await Wire.open(broker.port)
    frames = await wire.login(broker.password(ops_alice))
    assert status(frames) == "I", errors(frames)
    (error,) = errors(await wire.query("SELECT 1"))  # (c) alice (ops) is not allowed at all
    assert error.sqlstate == "42501"
    wire.close()

    decisions = [e for e in await broker.events("sql.statement") if e["user"] == "bob"]
    refused = [d for d in decisions if d["decision"] == "deny"]
    assert [(d["reason"], d["rule"]) for d in refused] == [
        ("delegation-denied", "alice-no-items"),
        ("delegation-denied", "alice-no-items"),
        ("delegation-denied", None),
    ]
    assert all(d["detail"]["detail"].startswith("user 'alice' ") for d in refused)
