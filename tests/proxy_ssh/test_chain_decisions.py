"""An SSH session of a delegation chain is decided for every user of the chain.

alice delegates to ``deploy-bot``; that delegated token is the actor token of carol's
delegation, and the agent's SSH certificate is issued under carol's (chained) token. The
certificate's record keeps the chain's earlier users with their groups (``act_groups``,
migration 0013), so each command is decided for carol *and* for alice, each with their own
groups. Real broker, real ``ssh`` client, real ``sshd`` target.

Before the fix the session's request named carol only: a deny rule for alice, or alice not
being allowed the command at all, did not stop it.
"""

from __future__ import annotations

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import policy, received
from tether.store import credentials as cred_store
from tether.store.schema import credentials

CHAIN_RULES = """
rules:
  - id: agent-commands
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh: {commands: ["echo **", "true"]}
  - id: finance-commands
    effect: allow
    groups: [finance]
    targets: {labels: {env: test}}
    ssh: {commands: ["echo **", "true"]}
  - id: alice-no-true
    effect: deny
    users: [alice]
    targets: {labels: {env: test}}
    ssh: {commands: ["true"]}
"""


async def test_a_chain_is_decided_for_each_of_its_users(env: Env) -> None:
    stack = env.stack
    stack.holder.replace(policy(CHAIN_RULES).current)
    chained = await stack.agent(
        on_behalf_of=("carol", ["finance"]), through=[("alice", ["finance"])]
    )
    assert chained.claims.delegators == ("carol", "alice")
    async with stack.store.engine.connect() as conn:
        issued = await cred_store.list_credentials(conn, agent_id="deploy-bot")
    (certificate,) = [c for c in issued if c.kind == "ssh_certificate"]
    assert certificate.act_groups == (("alice", ("finance",)),)

    # (a) both users allowed
    status, out, err = await chained.ssh("root@web-1", "echo hi")
    assert (status, out) == (0, b"hi\n"), err
    # (b) alice denied by a rule: refused, naming her
    status, _, err = await chained.ssh("root@web-1", "true")
    assert status == 1, err
    assert err.startswith(b"Tether: denied (rule alice-no-true): delegation-denied: user 'alice'")
    assert received(env.sshd_dir) == ["echo hi"]

    decisions = [e for e in await stack.events("decision") if e["user"] == "carol"]
    assert [(d["decision"], d["reason"], d["rule"]) for d in decisions] == [
        ("allow", "allowed", "agent-commands"),
        ("deny", "delegation-denied", "alice-no-true"),
    ]
    assert "'alice'" in decisions[-1]["detail"]


async def test_alice_not_allowed_at_all_refuses_the_chain(env: Env) -> None:
    stack = env.stack
    stack.holder.replace(policy(CHAIN_RULES).current)
    chained = await stack.agent(on_behalf_of=("carol", ["finance"]), through=[("alice", ["ops"])])
    status, _, err = await chained.ssh("root@web-1", "echo hi")
    assert status == 1, err
    assert err == (
        b"Tether: denied: delegation-denied: "
        b"user 'alice' is not allowed this action (default-deny)\r\n"
    )
    assert received(env.sshd_dir) == []


async def test_a_record_without_act_groups_gives_alice_no_groups(env: Env) -> None:
    """A certificate recorded before migration 0013: the earlier users count as group-less."""
    stack = env.stack
    stack.holder.replace(policy(CHAIN_RULES).current)
    chained = await stack.agent(
        on_behalf_of=("carol", ["finance"]), through=[("alice", ["finance"])]
    )
    carols = (credentials.c.kind == "ssh_certificate") & (credentials.c.subject == "carol")
    await stack.old_records(carols, act_groups=None)
    status, _, err = await chained.ssh("root@web-1", "echo hi")
    assert status == 1, err
    assert b"delegation-denied: user 'alice' is not allowed this action (default-deny)" in err
    assert received(env.sshd_dir) == []
