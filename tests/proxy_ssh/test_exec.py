"""exec through the broker with the real OpenSSH client against a real OpenSSH target.

The target's ForceCommand logger records every command string it received, so the tests
assert on what reached the target, not on what the broker says it sent.
"""

from __future__ import annotations

import json

import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import received
from tether.policy.shell import parse_command


async def test_allowed_command_runs_and_streams(env: Env) -> None:
    agent = await env.stack.agent()
    status, out, err = await agent.ssh("root@web-1", "echo hello world")
    assert (status, out) == (0, b"hello world\n"), err
    assert received(env.sshd_dir) == ["echo hello world"]


async def test_stdin_stdout_and_exit_status_pass_through(env: Env) -> None:
    agent = await env.stack.agent()
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    status, out, _ = await agent.ssh("root@web-1", "cat", stdin=payload)
    assert status == 0 and out == payload
    status, _, _ = await agent.ssh("root@web-1", "sh -c 'exit 3'")
    assert status == 3
    status, _, err = await agent.ssh("root@web-1", "sh -c 'echo oops >&2; exit 4'")
    assert (status, err) == (4, b"oops\n")


async def test_exit_signal_is_passed_back(env: Env) -> None:
    agent = await env.stack.agent()
    # $PPID is the target's session shell (the ForceCommand logger execs it).
    status, _, _ = await agent.ssh("root@web-1", "sh -c 'kill -TERM $PPID'")
    assert status == 255  # OpenSSH's status for a remote command killed by a signal
    async with agent.connect("root@web-1") as conn:
        result = await conn.run("sh -c 'kill -KILL $PPID'")
    assert result.exit_signal is not None and result.exit_signal[0] == "KILL"


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("'echo' \"a b\"", "echo 'a b'"),
        ("echo 'a;b' c\\ d", "echo 'a;b' 'c d'"),
        ("echo a && echo b", "echo a && echo b"),
        ("echo a\necho b", "echo a; echo b"),
        ("echo '$(id)' '`id`' '*'", "echo '$(id)' '`id`' '*'"),
        ("printf '%s\\n' x | head -n 1", "printf '%s\\n' x | head -n 1"),
    ],
)
async def test_target_receives_the_canonical_command_only(env: Env, raw: str, sent: str) -> None:
    agent = await env.stack.agent()
    status, _, err = await agent.ssh("root@web-1", raw)
    assert status == 0, err
    assert sent == parse_command(raw).canonical()
    assert received(env.sshd_dir) == [sent]


BYPASSES = [
    "echo a; cat /etc/shadow",
    "echo a && cat /etc/shadow",
    "echo a || cat /etc/shadow",
    "echo a | cat /etc/shadow",
    "echo a\ncat /etc/shadow",
    "echo $(cat /etc/shadow)",
    "echo `cat /etc/shadow`",
    'echo "$(id)"',
    "echo $HOME",
    "echo ${HOME}",
    "echo $'\\x41'",
    "echo <(id)",
    "echo $((1+1))",
    "cat /etc/shado?",
    "cat /etc/*",
    "cat /etc/[s]hadow",
    "echo {a,b}",
    "cat ~root/.ssh/id_rsa",
    "A=b echo x",
    "PATH=/tmp echo x",
    "echo x > /tmp/owned",
    "echo x >> /root/.bashrc",
    "cat < /etc/shadow",
    "echo x &",
    "(cat /etc/shadow)",
    "{ cat /etc/shadow; }",
    "if true; then cat /etc/shadow; fi",
    "for f in a; do echo $f; done",
    "f() { id; }; f",
    "echo x # comment",
    "cat <<EOF\nx\nEOF",
    "echo a\rid",
    "rm -rf /",
    "c\\at /etc/shadow",
    "'cat' /etc/shadow",
    "systemctl restart nginx",
]


@pytest.mark.parametrize("raw", BYPASSES)
async def test_bypass_attempts_never_reach_the_target(env: Env, raw: str) -> None:
    agent = await env.stack.agent()
    status, out, err = await agent.ssh("root@web-1", raw)
    assert status == 1 and out == b""
    assert err.startswith(b"Tether: "), err
    assert received(env.sshd_dir) == []


async def test_wire_level_control_characters_never_reach_the_target(env: Env) -> None:
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn:
        for raw in ("echo a\x00; id", "echo \x1b]0;x\x07", "echo a\x85b", "echo a\rid"):
            result = await conn.run(raw)
            assert result.exit_status == 1
            assert str(result.stderr).startswith("Tether: denied")
    assert received(env.sshd_dir) == []


async def test_refusals_name_the_reason_and_are_audited(env: Env) -> None:
    agent = await env.stack.agent()
    _, _, err = await agent.ssh("root@web-1", "cat /etc/shadow")
    assert err == b"Tether: denied (rule no-shadow): denied-by-rule\r\n"
    _, _, err = await agent.ssh("root@web-1", "systemctl restart nginx")
    assert b"approval required by rule restart-needs-approval" in err
    _, _, err = await agent.ssh("root@web-1", "echo $(id)")
    assert err.startswith(b"Tether: denied: shell-construct")
    decisions = await env.stack.events("decision")
    verdicts = [(e["decision"], e["rule"], e["reason"]) for e in decisions]
    assert verdicts == [
        ("deny", "no-shadow", "denied-by-rule"),
        ("approval_required", "restart-needs-approval", "approval-needed"),
        ("deny", None, "shell-construct"),
    ]
    for event in decisions:
        assert (event["agent"], event["task"], event["target"]) == ("deploy-bot", "T-1", "web-1")
        assert event["runtime"].startswith("join/")
        assert event["policy_version"] == env.stack.holder.current.version
        assert event["session_id"].startswith("ssh-")
    commands = await env.stack.events("ssh.command")
    assert [json.loads(c["action"])["command"] for c in commands] == [
        "cat /etc/shadow",
        "systemctl restart nginx",
        "echo $(id)",
    ]


async def test_session_and_command_events(env: Env) -> None:
    agent = await env.stack.agent()
    await agent.ssh("root@web-1", "sh -c 'exit 2'")
    await env.stack.broker.stop()  # waits for the session-end events
    kinds = [e["kind"] for e in await env.stack.events()]
    assert kinds == ["session.start", "decision", "ssh.command", "session.end"]
    command = (await env.stack.events("ssh.command"))[0]
    action = json.loads(command["action"])
    assert action == {"command": "sh -c 'exit 2'", "exit_status": 2}
    assert command["decision"] == "allow" and command["rule"] == "ops-read"
    detail = json.loads(command["detail"])
    assert detail["policy_version"] == env.stack.holder.current.version
    start = (await env.stack.events("session.start"))[0]
    assert json.loads(start["detail"])["login"] == "root"
