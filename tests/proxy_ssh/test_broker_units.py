"""Config validation, the target CA's one-time creation, idle timeout and max_sessions."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncssh
import pytest
from pydantic import ValidationError

from tests.proxy_ssh.conftest import RULES, Env
from tests.proxy_ssh.harness import build_stack
from tether.config import load_settings
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.sshca import CaPurpose, SshUserCA, describe_certificate
from tether.proxy.ssh.config import SshConfig
from tether.store import Store
from tether.vault.secrets import SecretStore
from tether.vault.ssh_certs import SECRET_NAME, TargetCA, session_key_id


def test_config_defaults_and_checks(tmp_path: Path) -> None:
    config = SshConfig()
    assert (config.enabled, config.host, config.port, config.allow_plain_keys) == (
        False, "127.0.0.1", 2222, False,
    )  # fmt: skip
    assert SshConfig(listen="[::1]:22").host == "::1"
    for bad in ({"listen": "nope"}, {"ciphers": ["3des-cbc"]}, {"live_check_interval": 2},
                {"ciphers": []}, {"bogus": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            SshConfig.model_validate(bad)
    settings = load_settings(
        None, environ={"TETHER_SSH__ENABLED": "true", "TETHER_SSH__LISTEN": "0.0.0.0:2022"},
        cwd=tmp_path,
    )  # fmt: skip
    assert settings.ssh.enabled and settings.ssh.port == 2022


async def test_target_ca_is_created_once_and_shared(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    try:
        cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
        one, two = SecretStore(store.engine, cipher), SecretStore(store.engine, cipher)
        lines = await asyncio.gather(
            TargetCA(one).public_key_line(), TargetCA(two).public_key_line()
        )
        assert lines[0] == lines[1]
        assert lines[0].endswith("tether-ssh-ca:target-session")
        key = await one.get(SECRET_NAME)
        with pytest.raises(ValueError, match="must not share a key"):
            SshUserCA.from_private_key_bytes(key, clock=lambda: None, purpose=CaPurpose.AGENT_LOGIN)  # type: ignore[arg-type,return-value]
        issued = await TargetCA(one).session_credential(
            login="deploy", agent="bot", task="T 1", session="ssh-1", validity_seconds=3600,
            allow_pty=False,
        )  # fmt: skip
        info = describe_certificate(issued.certificate.export_certificate().decode())
        assert info.principals == ("deploy",)
        assert info.key_id == "agent=bot task=T_1 session=ssh-1"
        assert (info.valid_before - info.valid_after).total_seconds() == 600 + 60  # capped
        assert (
            "permit-pty" not in info.extensions and "permit-agent-forwarding" not in info.extensions
        )
    finally:
        await store.close()


def test_session_key_id_is_safe() -> None:
    assert session_key_id(agent="a b", task="t=1", session="s") == "agent=a_b task=t_1 session=s"


async def test_idle_connection_is_closed(tmp_path: Path, env: Env) -> None:
    stack = await build_stack(tmp_path / "idle", RULES, idle_timeout=1, live_check_interval=0.2)
    try:
        target = await env.stack.targets.get("web-1")
        assert target is not None
        await stack.add_target("web-1", target.spec.model_dump(mode="json"), {"env": "test"})
        agent = await stack.agent()
        async with agent.connect("root@web-1") as conn:
            await asyncio.wait_for(conn.wait_closed(), 5)
        await stack.broker.stop()
        assert (await stack.events("session.end"))[-1]["reason"] == "idle"
    finally:
        await stack.close()


async def test_connections_past_max_sessions_are_refused(tmp_path: Path, env: Env) -> None:
    stack = await build_stack(tmp_path / "max", RULES, max_sessions=2)
    try:
        target = await env.stack.targets.get("web-1")
        assert target is not None
        await stack.add_target("web-1", target.spec.model_dump(mode="json"), {"env": "test"})
        await stack.secrets.put(SECRET_NAME, await env.stack.secrets.get(SECRET_NAME))
        agent = await stack.agent()
        async with agent.connect("root@web-1") as first, agent.connect("root@web-1") as second:
            with pytest.raises((asyncssh.DisconnectError, ConnectionError, OSError)):
                async with agent.connect("root@web-1"):
                    pass
            assert (await first.run("echo one")).stdout == "one\n"
            assert (await second.run("echo two")).stdout == "two\n"
    finally:
        await stack.close()
