"""Rotating the target-facing CA with overlap: stage, trust both on the host, promote.

A real ``sshd`` re-reads ``TrustedUserCAKeys`` at every login, so the test edits its file as
an operator would, and real ``ssh`` sessions through the broker show which key signs.
"""

from __future__ import annotations

import pytest

from tests.proxy_ssh.conftest import Env
from tether.vault.secrets import SecretNotFound
from tether.vault.ssh_certs import NEXT_NAME, SECRET_NAME, TargetCA


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trust(env: Env, *lines: str) -> None:
    (env.sshd_dir / "trusted_ca.pub").write_text("\n".join(lines) + "\n")


async def test_rotation_stages_then_promotes_with_overlap(env: Env) -> None:
    stack = env.stack
    ca = stack.broker.context.target_ca
    ticks = Ticks()
    other_node = TargetCA(stack.secrets, monotonic=ticks)  # another node, loaded before
    old = await ca.public_key_line()
    assert await other_node.public_key_line() == old
    agent = await stack.agent()

    staged = await ca.rotate()
    assert staged.step == "staged" and staged.trusted_lines[0] == old
    new = staged.trusted_lines[1]
    assert new != old and await ca.trusted_lines() == (old, new)
    assert await ca.public_key_line() == old  # a staged key signs nothing yet
    status, out, err = await agent.ssh("root@web-1", "echo staged")
    assert (status, out) == (0, b"staged\n"), err  # still signed by the old key

    trust(env, old, new)  # the operator installs both lines, then promotes
    promoted = await ca.rotate()
    assert (promoted.step, promoted.trusted_lines) == ("promoted", (new,))
    assert (await stack.secrets.get_versioned(SECRET_NAME))[1] == 2
    assert await ca.public_key_line() == new  # this node signs with it at once
    status, out, err = await agent.ssh("root@web-1", "echo rotated")
    assert (status, out) == (0, b"rotated\n"), err

    trust(env, new)  # the host drops the old key: sessions keep working
    status, out, err = await agent.ssh("root@web-1", "echo again")
    assert (status, out) == (0, b"again\n"), err
    with pytest.raises(SecretNotFound):
        await stack.secrets.get(NEXT_NAME)  # the staged copy is gone

    assert await other_node.public_key_line() == old  # until its refresh comes round
    ticks.now += 31
    assert await other_node.public_key_line() == new

    trust(env, old)  # a host that never got the new line refuses the new certificates
    status, _, err = await agent.ssh("root@web-1", "echo refused")
    assert status != 0 and b"Tether" in err, err
