"""``tether policy eval|test|check`` and ``tether version``, run as the installed command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tether import __version__

RULES = """\
rules:
  - id: bot-search
    effect: allow
    agents: [bot]
    targets: [github]
    mcp: {tools: ["search_*"]}
  - id: no-delete
    effect: deny
    targets: ["*"]
    mcp: {tools: ["delete_*"]}
"""
TESTS = """\
tests:
  - name: searches
    request: {agent: {id: bot}, target: {name: github}, action: {mcp: {tool: search_x}}}
    expect: {decision: allow, rule: bot-search}
  - name: deletes
    request: {agent: {id: bot}, target: {name: github}, action: {mcp: {tool: delete_x}}}
    expect: {decision: deny, reason: denied-by-rule}
"""


def request(tool: str) -> dict[str, Any]:
    return {"agent": {"id": "bot"}, "target": {"name": "github"}, "action": {"mcp": {"tool": tool}}}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "pol"
    directory.mkdir()
    (directory / "github.yaml").write_text(RULES + TESTS)
    return directory


@pytest.fixture
def tether(tether_bin: Path, clean_env: dict[str, str], tmp_path: Path) -> Any:
    def run(*args: str, stdin: str | bytes = b"") -> subprocess.CompletedProcess[str]:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        result = subprocess.run(
            [str(tether_bin), *args],
            input=data, capture_output=True, env=clean_env, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
        )

    return run


def decisions(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_eval_one_request_from_stdin(tether: Any, policies: Path) -> None:
    result = tether("policy", "eval", "--policies", str(policies),
                    stdin=json.dumps(request("search_code")))  # fmt: skip
    assert result.returncode == 0, result.stderr
    (answer,) = decisions(result.stdout)
    assert answer["decision"] == "allow"
    assert answer["rule"] == "bot-search"
    assert answer["policy_version"].startswith("sha256:")
    assert result.stdout.startswith('{"decision":"allow","rule":"bot-search"')  # compact


def test_eval_pretty_printed_request_file(tether: Any, policies: Path, tmp_path: Path) -> None:
    file = tmp_path / "req.json"
    file.write_text(json.dumps(request("delete_repo"), indent=2))
    result = tether("policy", "eval", "--policies", str(policies), "--request", str(file))
    assert result.returncode == 0, result.stderr
    (answer,) = decisions(result.stdout)
    assert (answer["decision"], answer["reason"]) == ("deny", "denied-by-rule")


def test_eval_json_lines_in_order_with_bad_lines(tether: Any, policies: Path) -> None:
    lines = [
        json.dumps(request("search_code")),
        "{not json",
        "",
        "   ",
        json.dumps(request("delete_repo")),
        "[1, 2]",
        '{"agent": {"id": "a"}, "agent": {"id": "b"}}',
        json.dumps(request("other")),
    ]
    result = tether("policy", "eval", "--policies", str(policies), stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    answers = decisions(result.stdout)
    assert [(a["decision"], a["reason"]) for a in answers] == [
        ("allow", "allowed"),
        ("deny", "invalid-request"),
        ("deny", "denied-by-rule"),
        ("deny", "invalid-request"),
        ("deny", "invalid-request"),
        ("deny", "default-deny"),
    ]
    assert answers[1]["detail"].startswith("not JSON: ")
    assert answers[1]["detail"].endswith("(line 2 column 2)")
    assert answers[4]["detail"] == "duplicate key 'agent' (line 7)"
    assert len({a["policy_version"] for a in answers}) == 1


def test_eval_json_lines_from_a_file_with_crlf(tether: Any, policies: Path, tmp_path: Path) -> None:
    file = tmp_path / "reqs.jsonl"
    file.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(request("search_a")).encode() + b"\r\n"
        + b"\xff\xfe\r\n"
        + json.dumps(request("search_b")).encode() + b"\r\n"
    )  # fmt: skip
    result = tether("policy", "eval", "-p", str(policies), "-r", str(file))
    assert result.returncode == 0, result.stderr
    assert [a["reason"] for a in decisions(result.stdout)] == [
        "allowed", "invalid-request", "allowed"
    ]  # fmt: skip


def test_eval_dash_reads_stdin(tether: Any, policies: Path) -> None:
    result = tether("policy", "eval", "-p", str(policies), "-r", "-",
                    stdin=json.dumps(request("search_x")))  # fmt: skip
    assert decisions(result.stdout)[0]["decision"] == "allow"


def test_eval_empty_input_answers_nothing(tether: Any, policies: Path) -> None:
    result = tether("policy", "eval", "--policies", str(policies), stdin="\n\n")
    assert (result.returncode, result.stdout) == (0, "")


def test_eval_answers_each_line_as_it_comes(tether_bin: Path, policies: Path) -> None:
    # A co-process: the answer to a line arrives before standard input is closed.
    with subprocess.Popen(
        [str(tether_bin), "policy", "eval", "--policies", str(policies)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        for tool, expected in [("search_a", "allow"), ("delete_b", "deny")]:
            process.stdin.write(json.dumps(request(tool)) + "\n")
            process.stdin.flush()
            assert json.loads(process.stdout.readline())["decision"] == expected
        process.stdin.close()
        assert process.wait(timeout=30) == 0


def test_eval_exits_2_when_the_policies_do_not_load(tether: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.yaml").write_text("rules:\n  - id: x\n    effect: perhaps\n")
    result = tether("policy", "eval", "--policies", str(bad), stdin=json.dumps(request("x")))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("tether: error: policies did not load: a.yaml:")
    assert "Traceback" not in result.stderr


def test_eval_exits_2_on_a_missing_directory(tether: Any, tmp_path: Path) -> None:
    result = tether("policy", "eval", "--policies", "nope", stdin="{}")
    assert result.returncode == 2
    assert "nope: policy directory not found" in result.stderr


def test_eval_exits_2_on_a_missing_request_file(tether: Any, policies: Path) -> None:
    result = tether("policy", "eval", "--policies", str(policies), "--request", "missing.json")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tether: error: cannot read missing.json: no such file or directory"
    )


def test_test_passes(tether: Any, policies: Path) -> None:
    result = tether("policy", "test", str(policies))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed, 0 failed" in result.stdout


def test_test_fails_listing_every_miss(tether: Any, policies: Path) -> None:
    broken = TESTS.replace("decision: allow", "decision: deny").replace(
        "reason: denied-by-rule", "reason: default-deny"
    )
    (policies / "github.yaml").write_text(RULES + broken)
    result = tether("policy", "test", str(policies))
    assert result.returncode == 1
    misses = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(misses) == 2
    assert misses[0].startswith("FAIL github.yaml:")
    assert "searches" in misses[0] and "deletes" in misses[1]
    assert "0 passed, 2 failed" in result.stdout


def test_test_without_tests_fails(tether: Any, policies: Path) -> None:
    (policies / "github.yaml").write_text(RULES)
    result = tether("policy", "test", str(policies))
    assert result.returncode == 1
    assert "no tests" in result.stderr


def test_test_exits_2_when_the_policies_do_not_load(tether: Any, tmp_path: Path) -> None:
    result = tether("policy", "test", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "policy directory not found" in result.stderr


def test_check_clean(tether: Any, policies: Path) -> None:
    result = tether("policy", "check", str(policies))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rules in 1 files" in result.stdout
    assert "0 errors, 0 warnings" in result.stdout


def test_check_warnings_exit_0_unless_strict(tether: Any, policies: Path) -> None:
    (policies / "ssh.yaml").write_text(
        "rules:\n  - id: any-shell\n    effect: allow\n    agents: [bot]\n"
        '    ssh: {commands: ["bash -c *"]}\n'
    )
    result = tether("policy", "check", str(policies))
    assert result.returncode == 0
    assert "ssh.yaml:2: warning: arbitrary-code: rule 'any-shell'" in result.stdout
    assert tether("policy", "check", "--strict", str(policies)).returncode == 1


def test_check_exits_2_when_the_policies_do_not_load(tether: Any, policies: Path) -> None:
    (policies / "dup.yaml").write_text(RULES)
    result = tether("policy", "check", str(policies))
    assert result.returncode == 2
    assert result.stderr.startswith(
        "tether: error: policies did not load: github.yaml:2: rule 'bot-search': duplicate"
    )


def test_version(tether: Any) -> None:
    result = tether("version")
    assert (result.returncode, result.stdout) == (0, f"tether {__version__}\n")


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["policy"], ["policy", "eval"], ["policy", "test"], ["policy", "check"]],
)
def test_every_command_and_option_has_help(tether: Any, command: list[str]) -> None:
    result = tether(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    options = [line for line in result.stdout.splitlines() if line.lstrip("│ ").startswith("--")]
    for line in options:
        words = line.strip("│ ").split()
        assert len(words) > 2 or "--help" in line, f"no help text: {line!r}"
