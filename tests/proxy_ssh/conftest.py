"""Fixtures: the broker stack, a real OpenSSH target trusting Tether's target CA."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.identity.conftest_sshd import Sshd, openssh_available, running_sshd
from tests.node_loop import pytest_asyncio_loop_factories  # noqa: F401 - the node's loop
from tests.proxy_ssh.harness import Stack, build_stack, known_hosts_line, sshd_extra

RULES = """
rules:
  - id: ops-read
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh:
      commands: ["echo **", "true", "false", "cat **", "printf **", "head **", "sleep *", "sh -c *"]
  - id: no-shadow
    effect: deny
    targets: {labels: {env: test}}
    ssh:
      commands: ["cat /etc/shadow"]
  - id: restart-needs-approval
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh:
      commands: ["systemctl restart *"]
    approval:
      approvers: ["group:ops"]
  - id: forward-local
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh:
      forwards: ["127.0.0.1:*"]
  - id: shell-for-shell-bot
    effect: allow
    agents: [shell-bot]
    targets: {labels: {env: test}}
    ssh:
      shell: true
  - id: files
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    files:
      read: ["/tmp/**", "/root/**"]
      list: ["/tmp/**", "/root", "/root/**", "/"]
      write: ["/tmp/**", "/root/**"]
      delete: ["/tmp/**"]
"""


@dataclass
class Env:
    stack: Stack
    sshd: Sshd
    sshd_dir: Path


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    built = await build_stack(tmp_path, RULES)
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
async def target_ca_line(stack: Stack) -> str:
    return await stack.broker.context.target_ca.public_key_line()


@pytest.fixture
def sshd(tmp_path: Path, target_ca_line: str) -> Iterator[Sshd]:
    assert openssh_available(), "apt-get install openssh-client openssh-server (see .ci/run)"
    directory = tmp_path / "sshd"
    directory.mkdir()
    with running_sshd(
        directory, trusted_ca_keys=[target_ca_line], principals=["root"],
        extra_config=sshd_extra(directory),
    ) as server:  # fmt: skip
        yield server


@pytest.fixture
async def env(stack: Stack, sshd: Sshd, tmp_path: Path) -> Env:
    directory = tmp_path / "sshd"
    await stack.add_target(
        "web-1",
        {
            "host": "127.0.0.1",
            "port": sshd.port,
            "users": ["root"],
            "known_hosts": known_hosts_line(directory, sshd.port),
            "credential": {"type": "certificate", "validity_seconds": 600},
        },
        {"env": "test"},
    )
    return Env(stack, sshd, directory)
