"""Who may log in: Tether's certificates only, live, for a login the target lists."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncssh

from tests.proxy_ssh.conftest import RULES, Env
from tests.proxy_ssh.harness import Agent, live_session, plain_key_stack, received
from tether.identity.sshca import CaPurpose, SshUserCA


async def refusal_reasons(env: Env) -> list[str]:
    return [e["reason"] for e in await env.stack.events("token.refused")]


def sign(agent: Agent, ca: SshUserCA, *, validity: int = 300, key_id: str | None = None) -> None:
    claims = agent.claims
    agent.certificate = ca.issue(
        agent.public_key,
        principals=["root"],
        key_id=key_id or f"agent={claims.agent_id} task={claims.task.id} jti={claims.jti}",
        validity_seconds=validity,
    )
    agent.cert_path.write_text(agent.certificate + "\n")


async def assert_refused(env: Env, agent: Agent, reason: str, login: str = "root@web-1") -> None:
    status, out, err = await agent.ssh(login, "echo hi")
    assert status == 255 and out == b"", err
    assert b"Permission denied" in err
    assert reason in await refusal_reasons(env)
    assert received(env.sshd_dir) == []


async def test_certificate_of_another_ca_is_refused(env: Env) -> None:
    agent = await env.stack.agent()
    sign(agent, SshUserCA.generate(clock=lambda: datetime.now(UTC)))
    await assert_refused(env, agent, "the certificate is not signed by Tether's agent-login CA")


async def test_certificate_of_the_target_ca_is_refused(env: Env) -> None:
    agent = await env.stack.agent()
    target_ca = await env.stack.broker.context.target_ca.ca()
    assert target_ca.purpose == CaPurpose.TARGET_SESSION
    sign(agent, target_ca)
    await assert_refused(env, agent, "the certificate is not signed by Tether's agent-login CA")


async def test_expired_certificate_is_refused(env: Env) -> None:
    agent = await env.stack.agent()
    sign(agent, env.stack.identity.keys.ssh_user_ca, validity=1)
    await asyncio.sleep(1.5)
    await assert_refused(env, agent, "the certificate is expired or not yet valid")


async def test_certificate_tether_did_not_record_is_refused(env: Env) -> None:
    agent = await env.stack.agent()
    sign(agent, env.stack.identity.keys.ssh_user_ca)  # right CA, valid, but not issued by the API
    await assert_refused(env, agent, "Tether has no record of this certificate")


async def test_revoked_task_token_or_disabled_agent_is_refused(env: Env) -> None:
    agent = await env.stack.agent()
    await env.stack.identity.revoke("token", agent.claims.jti, reason="test", by="admin")
    await assert_refused(env, agent, "the token is revoked")
    other = await env.stack.agent(task="T-2")
    await env.stack.identity.revoke("task", "T-2", reason="test", by="admin")
    await assert_refused(env, other, "the task is revoked")
    third = await env.stack.agent(task="T-3")
    await env.stack.identity.set_agent_state("deploy-bot", "disabled")
    await assert_refused(env, third, "the agent is disabled")


async def test_login_must_be_a_principal_and_a_user_of_the_target(env: Env) -> None:
    agent = await env.stack.agent(principals=["deploy"])
    await assert_refused(env, agent, "the certificate does not name the login 'root'")
    wide = await env.stack.agent(principals=["root", "admin"])
    await assert_refused(env, wide, "login 'admin' is not allowed on web-1", "admin@web-1")
    await assert_refused(env, wide, "no SSH target named 'web-9'", "root@web-9")
    await assert_refused(env, wide, "log in as <remote login>@<target>, e.g. root@web-1", "root")


async def test_full_login_as_principal_is_accepted(env: Env) -> None:
    agent = await env.stack.agent(principals=["root@web-1"])
    status, out, _ = await agent.ssh("root@web-1", "echo hi")
    assert (status, out) == (0, b"hi\n")


async def test_source_address_is_enforced(env: Env) -> None:
    agent = await env.stack.agent(source="10.9.9.9/32")
    await assert_refused(env, agent, "the peer address is outside the certificate's source-address")


async def test_plain_keys_and_passwords_are_refused(env: Env) -> None:
    agent = await env.stack.agent()
    agent.cert_path.unlink()
    agent.cert_path = Path("/dev/null")
    status, _, err = await agent.ssh("root@web-1", "echo hi")
    assert status == 255 and b"Permission denied (publickey)" in err
    password = ["-o", "PreferredAuthentications=password,keyboard-interactive"]
    status, _, err = await agent.ssh("root@web-1", "echo hi", args=password)
    assert status == 255 and b"Permission denied (publickey)" in err
    assert received(env.sshd_dir) == []


async def test_plain_key_of_a_live_certificate_when_configured(tmp_path: Path, env: Env) -> None:
    stack = await plain_key_stack(tmp_path / "plain", env.stack, RULES)
    try:
        agent = await stack.agent()
        agent.cert_path = Path("/dev/null")
        status, out, err = await agent.ssh("root@web-1", "echo plain")
        assert (status, out) == (0, b"plain\n"), err
        stranger = await stack.agent("stranger-bot")
        stranger.key_path.write_bytes(
            asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh")
        )
        stranger.cert_path = Path("/dev/null")
        status, _, _ = await stranger.ssh("root@web-1", "echo plain")
        assert status == 255
    finally:
        await stack.close()


async def test_revocation_ends_a_live_session_within_a_second(env: Env) -> None:
    agent = await env.stack.agent()
    process = await live_session(env.stack.broker.port, agent, env.sshd_dir)
    revoked = time.monotonic()
    await env.stack.identity.revoke("task", "T-1", reason="incident", by="admin")
    await asyncio.wait_for(process.wait(), 5)
    elapsed = time.monotonic() - revoked
    assert elapsed <= 1.0, elapsed
    assert process.returncode == 255
    await env.stack.broker.stop()
    end = (await env.stack.events("session.end"))[-1]
    assert end["reason"] == "revoked"


async def test_host_key_mismatch_refuses(env: Env) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    target = await env.stack.targets.get("web-1")
    assert target is not None
    spec = target.spec.model_dump(mode="json")
    spec["known_hosts"] = f"[127.0.0.1]:{env.sshd.port} {other.strip()}"
    await env.stack.add_target("web-2", spec, {"env": "test"})
    agent = await env.stack.agent()
    status, _, err = await agent.ssh("root@web-2", "echo hi")
    assert status == 1
    assert err == b"Tether: target web-2: host key mismatch, refused\r\n"
    command = (await env.stack.events("ssh.command"))[-1]
    assert json.loads(command["detail"])["error"] == "target web-2: host key mismatch, refused"
    assert received(env.sshd_dir) == []


async def test_vaulted_private_key_credential(tmp_path: Path, env: Env) -> None:
    from tests.identity.conftest_sshd import running_sshd
    from tests.proxy_ssh.harness import known_hosts_line, sshd_extra

    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key("openssh").decode().strip()
    directory = tmp_path / "keyed"
    directory.mkdir()
    with running_sshd(
        directory, trusted_ca_keys=[], principals=[], authorized_keys=[public],
        extra_config=sshd_extra(directory),
    ) as sshd:  # fmt: skip
        await env.stack.secrets.put("web-3/root-key", key.export_private_key("openssh"))
        await env.stack.add_target(
            "web-3",
            {
                "host": "127.0.0.1", "port": sshd.port, "users": ["root"],
                "known_hosts": known_hosts_line(directory, sshd.port),
                "credential": {"type": "private_key", "secret": "web-3/root-key"},
            },
            {"env": "test"},
        )  # fmt: skip
        agent = await env.stack.agent()
        status, out, err = await agent.ssh("root@web-3", "echo keyed")
        assert (status, out) == (0, b"keyed\n"), err
        assert received(directory) == ["echo keyed"]
        rotated = asyncssh.generate_private_key("ssh-ed25519")
        await env.stack.secrets.put("web-3/root-key", rotated.export_private_key("openssh"))
        status, _, err = await agent.ssh("root@web-3", "echo keyed")
        assert (status, err) == (1, b"Tether: target web-3 refused the login\r\n")
