"""The vault commands' own checks, before any server is involved.

Values never come from argv; an empty value, a terminal on standard input, a reserved or
malformed name, flags of another kind, a bad credential shorthand or a bad target file are
each one line on stderr and exit 2, and nothing is sent (the server URL is unreachable,
which would exit 3).
"""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.cli.main import app

runner = CliRunner()
ENV = {"TETHER_ADMIN_TOKEN": "tat_000000000000.x", "TETHER_SERVER": "http://127.0.0.1:9"}


def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    done = runner.invoke(app, list(args), env=ENV, input=stdin)
    return done.exit_code, done.stdout, done.stderr


def refused(args: tuple[str, ...], message: str, stdin: bytes | None = b"value\n") -> None:
    code, out, err = run(*args, stdin=stdin)
    assert (code, out) == (2, ""), (code, out, err)
    assert err.count("\n") == 1 and err.startswith("tether: error: "), err
    assert message in err, err


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("secret", "set", "a"), b"", "the value is empty"),
        (("secret", "set", "a"), b"\n", "the value is empty"),
        (("secret", "rotate", "a"), b"\r\n", "the value is empty"),
        (("secret", "set", "tether/ssh-target-ca"), b"x", "reserved for Tether's own use"),
        (("secret", "delete", "TETHER/x"), None, "reserved"),
        (("secret", "set", "../x"), b"x", "invalid secret name"),
        (("secret", "set", "a", "--file", "/nonexistent/f"), None, "cannot read /nonexistent/f"),
    ],
)
def test_secret_refusals(args: tuple[str, ...], stdin: bytes | None, message: str) -> None:
    refused(args, message, stdin)


def test_secret_value_is_not_an_argument() -> None:
    code, _, err = run("secret", "set", "a", "s3cret-on-argv")
    assert code == 2 and "s3cret-on-argv" in err  # typer: unexpected extra argument


def test_empty_file_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    refused(("secret", "set", "a", "--file", str(tmp_path / "empty")), "the value is empty")


def test_a_terminal_on_stdin_is_refused(tether_bin: Path, clean_env: dict[str, str]) -> None:
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [str(tether_bin), "secret", "set", "api"],
            stdin=terminal,
            capture_output=True,
            text=True,
            env={**clean_env, **ENV},
            timeout=30,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 2
    assert done.stderr == (
        "tether: error: no value: pipe it on standard input or pass --file "
        "(values are never taken from the command line)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("target", "add", "Bad_Name", "--kind", "http", "--url", "https://x"), "DNS label"),
        (("target", "add", "t"), "give --kind (http, ssh or postgres) or --from-file"),
        (("target", "add", "t", "--kind", "ftp"), "--kind 'ftp'"),
        (("target", "add", "t", "--kind", "http"), "kind http needs --url"),
        (("target", "add", "t", "-k", "http", "--url", "https://x", "--host", "h"), "--host is"),
        (("target", "add", "t", "-k", "ssh", "--host", "h", "-u", "a", "-c", "certificate"),
         "give known_hosts or host_ca"),
        (("target", "add", "t", "-k", "http", "--url", "https://x", "-c", "bearer"),
         "--credential: expected bearer:SECRET"),
        (("target", "add", "t", "-k", "http", "--url", "https://x", "-c", "bearer:tether/ca"),
         "reserved"),
        (("target", "add", "t", "-k", "http", "--url", "ftp://x"), "scheme must be http"),
        (("target", "add", "t", "-k", "http", "--url", "https://x", "-l", "-bad=1"), "label"),
        (("target", "add", "t", "-k", "postgres", "--host", "h", "--database", "d", "-c",
          "dynamic:admin:pw"), "dynamic:ADMIN_USER:ADMIN_SECRET:PARENT_ROLE"),
        (("target", "add", "t", "-k", "http", "--url", "https://x", "--max-body", "-1"),
         "greater than or equal to 0"),
        (("target", "add", "t", "-k", "ssh", "--host", "h", "-u", "a", "-c", "certificate",
          "--pipeline-reads"), "--pipeline-reads is not an option of kind 'ssh'"),
        (("target", "list", "--kind", "ftp"), "--kind 'ftp'"),
        (("target", "show", "UPPER"), "invalid target name"),
        (("target", "remove", "a.b"), "invalid target name"),
    ],
)  # fmt: skip
def test_target_refusals(args: tuple[str, ...], message: str) -> None:
    refused(args, message, None)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("kind: http\nbase_url: [", "not valid YAML or JSON"),
        ("- a\n- b\n", "a target file is a mapping"),
        ("base_url: https://x\n", "kind: expected http, ssh or postgres"),
        ("kind: http\nname: other\nbase_url: https://x\n", "the file names 'other'"),
        ("kind: http\nbase_url: https://x\nca_bundle_file: missing.pem\n", "cannot read"),
        ("kind: http\nbase_url: https://x\nlabels: [a]\n", "labels: expected a mapping"),
        ("kind: http\nbase_url: https://x\ntimeout: 5\n", "spec.timeout: Extra inputs"),
        (
            "kind: http\nbase_url: https://x\ncredential:\n  type: oauth2_client_credentials\n"
            "  token_url: http://idp.example/token\n  client_id: c\n  secret: s\n",
            "token URL must be https",
        ),
    ],
)
def test_target_file_refusals(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(document)
    refused(("target", "add", "t", "--from-file", str(path)), message, None)


def test_from_file_excludes_flags(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("kind: http\nbase_url: https://x\n")
    refused(
        ("target", "add", "t", "--from-file", str(path), "--url", "https://y"),
        "give no spec flags with it",
        None,
    )
    refused(
        ("target", "add", "t", "--from-file", str(path), "--kind", "ssh"),
        "--kind 'ssh' but the file says kind 'http'",
        None,
    )


def test_every_command_has_help() -> None:
    for command in (
        ("secret", "set"),
        ("secret", "list"),
        ("secret", "rotate"),
        ("secret", "delete"),
        ("target", "add"),
        ("target", "list"),
        ("target", "show"),
        ("target", "remove"),
    ):
        code, out, _ = run(*command, "--help")
        assert code == 0 and "Usage" in out


def test_ssh_ca_under_another_master_key_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TETHER_MASTER_KEY", raising=False)
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    data = str(tmp_path / "data")
    first = runner.invoke(app, ["target", "ssh-ca", "--data-dir", data])
    assert first.exit_code == 0 and first.stdout.startswith("ssh-ed25519 "), first.stderr
    other = {"TETHER_MASTER_KEY": "A" * 43}
    done = runner.invoke(app, ["target", "ssh-ca", "--data-dir", data], env=other)
    # Was "tether: internal error: SecretError: ..." (exit 70).
    assert (done.exit_code, done.stdout) == (2, ""), (done.exit_code, done.stderr)
    assert done.stderr.startswith("tether: error: ") and done.stderr.count("\n") == 1
    assert "another master key" in done.stderr
