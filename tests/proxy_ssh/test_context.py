"""An SSH session is decided with its token's whole context: task purpose, delegation, token.

The certificate's record keeps the task purpose, the issuing token and, for a delegated
token, the user's groups (migration 0008), so ``when: task.purpose`` rules and the delegation
intersection work over SSH as over HTTP, and revoking the issuing token ends even sessions
opened with the bare key the certificate named. Real ``ssh`` clients, real ``sshd`` target.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proxy_ssh.conftest import RULES, Env
from tests.proxy_ssh.harness import Stack, plain_key_stack, policy, received
from tether.identity.claims import Claims, Confirmation, Runtime, Task
from tether.proxy.core import actor_chain
from tether.proxy.ssh.auth import _actor
from tether.store.schema import credentials

PURPOSE_RULES = """
rules:
  - id: deploy-echo
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh: {commands: ["echo **"]}
    when: 'task.purpose == "deploy"'
  - id: printf
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh: {commands: ["printf **"]}
  - id: no-printf-when-auditing
    effect: deny
    targets: {labels: {env: test}}
    ssh: {commands: ["printf **"]}
    when: 'task.purpose == "audit"'
"""

DELEGATION_RULES = """
rules:
  - id: agent-commands
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh: {commands: ["echo **", "true"]}
  - id: finance-echo
    effect: allow
    groups: [finance]
    targets: {labels: {env: test}}
    ssh: {commands: ["echo **"]}
"""


def use(stack: Stack, rules: str) -> None:
    stack.holder.replace(policy(rules).current)


async def test_a_task_purpose_rule_allows_and_denies_over_ssh(env: Env) -> None:
    use(env.stack, PURPOSE_RULES)
    deploying = await env.stack.agent(task="T-1", purpose="deploy")
    auditing = await env.stack.agent(task="T-2", purpose="audit")

    status, out, err = await deploying.ssh("root@web-1", "echo hi")
    assert (status, out) == (0, b"hi\n"), err
    status, out, err = await deploying.ssh("root@web-1", "printf ok")
    assert (status, out) == (0, b"ok"), err  # the purpose-keyed deny rule does not match

    status, _, err = await auditing.ssh("root@web-1", "echo hi")
    assert status == 1 and b"Tether: denied: default-deny" in err, err
    status, _, err = await auditing.ssh("root@web-1", "printf ok")
    assert status == 1 and b"(rule no-printf-when-auditing)" in err, err
    assert received(env.sshd_dir) == ["echo hi", "printf ok"]

    decisions = [e for e in await env.stack.events("decision") if e["task"] == "T-2"]
    assert [d["rule"] for d in decisions] == [None, "no-printf-when-auditing"]


async def test_a_delegated_certificate_gets_the_intersection(env: Env) -> None:
    use(env.stack, DELEGATION_RULES)
    for_alice = await env.stack.agent(on_behalf_of=("alice", ["finance"]))
    assert for_alice.claims.sub == "alice" and for_alice.claims.agent == "deploy-bot"

    status, out, err = await for_alice.ssh("root@web-1", "echo hi")
    assert (status, out) == (0, b"hi\n"), err  # both the agent and alice may
    status, _, err = await for_alice.ssh("root@web-1", "true")
    assert status == 1 and b"delegation-denied" in err, err  # the agent may, alice may not

    for_bob = await env.stack.agent(on_behalf_of=("bob", ["ops"]))
    status, _, err = await for_bob.ssh("root@web-1", "echo hi")
    assert status == 1 and b"delegation-denied" in err, err

    alone = await env.stack.agent()
    status, _, err = await alone.ssh("root@web-1", "true")
    assert status == 0, err  # the agent on its own
    assert received(env.sshd_dir) == ["echo hi", "true"]

    starts = [e for e in await env.stack.events("session.start") if e["user"] == "alice"]
    assert starts and "deploy-bot" in starts[0]["actor_chain"]


async def test_a_certificate_recorded_without_its_context_is_refused(env: Env) -> None:
    agent = await env.stack.agent()
    certificates = credentials.c.kind == "ssh_certificate"
    # As recorded before migration 0008.
    await env.stack.old_records(certificates, task_purpose=None, token_jti=None)
    status, _, err = await agent.ssh("root@web-1", "echo hi")
    assert status == 255, err
    refused = await env.stack.events("token.refused")
    assert refused and "predates" in refused[-1]["reason"]
    # A record of another token's.
    await env.stack.old_records(certificates, task_purpose="deploy", token_jti="another-token")
    status, _, err = await agent.ssh("root@web-1", "echo hi")
    assert status == 255, err
    refused = await env.stack.events("token.refused")
    assert "does not match" in refused[-1]["reason"]
    assert received(env.sshd_dir) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), max_size=5))
def test_an_actor_chain_is_rebuilt_as_recorded(chain: list[str]) -> None:
    claims = Claims(
        iss="i", aud="a", sub="alice", jti="j", iat=0, nbf=0, exp=1, task=Task("T", "p"),
        scope=(), runtime=Runtime("r"), cnf=Confirmation(jkt="k"), act=_actor(chain),
    )  # fmt: skip
    assert actor_chain(claims) == tuple(chain)


async def test_revoking_the_issuing_token_ends_plain_key_sessions(tmp_path: Path, env: Env) -> None:
    stack = await plain_key_stack(tmp_path / "plain", env.stack, RULES)
    try:
        agent = await stack.agent()
        agent.cert_path = Path("/dev/null")  # the bare key only
        argv = ["ssh", "-p", str(stack.broker.port), *agent.ssh_args(), "root@web-1@127.0.0.1"]
        process = await asyncio.create_subprocess_exec(
            *argv, "sleep 60", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(200):
            if received(env.sshd_dir) == ["sleep 60"]:
                break
            await asyncio.sleep(0.05)
        assert received(env.sshd_dir) == ["sleep 60"]
        revoked = time.monotonic()
        await stack.identity.revoke("token", agent.claims.jti, reason="leaked", by="admin")
        await asyncio.wait_for(process.wait(), 5)
        assert time.monotonic() - revoked <= 1.5
        status, _, _ = await agent.ssh("root@web-1", "echo again")
        assert status == 255  # and the key no longer logs in
        assert received(env.sshd_dir) == ["sleep 60"]
    finally:
        await stack.close()
