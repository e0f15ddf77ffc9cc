"""The admin commands' own checks, before any server is involved, and ``admin-token create``.

(The commands against a real server are in test_e2e_serve.py.)
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.cli.main import app
from tether.crypto.masterkey import load_master_key
from tether.crypto.seal import RowSealer
from tether.identity.admintokens import find_admin_token
from tether.store import Store

runner = CliRunner()


def run(*args: str, **env: str) -> tuple[int, str, str]:
    environ = {"TETHER_ADMIN_TOKEN": "", "TETHER_SERVER": "http://127.0.0.1:9", **env}
    done = runner.invoke(app, list(args), env=environ)
    return done.exit_code, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("agent", "create", "bot", "--owner", "a", "--label", "novalue"),
            "label 'novalue': expected NAME=VALUE",
        ),
        (
            ("agent", "create", "bot", "--owner", "a", "-l", "a=1", "-l", "a=2"),
            "label 'a' is given twice",
        ),
        (
            ("agent", "list", "--state", "zombie"),
            "--state 'zombie': expected active, disabled or offboarded",
        ),
        (("agent", "list"), "no admin token: set TETHER_ADMIN_TOKEN or pass --token-file"),
        (
            ("agent", "show", "bot", "--token-file", "/nonexistent/token"),
            "cannot read /nonexistent/token: no such file or directory",
        ),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    code, out, err = run(*args)
    assert (code, out) == (2, "")
    assert err == f"tether: error: {message}\n"


def test_token_file_is_read(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tat_000000000000.x\n")
    code, _, err = run("agent", "list", "--token-file", str(token))
    assert code == 3  # it got as far as calling the (absent) server
    assert err.startswith("tether: error: cannot reach the Tether server at http://127.0.0.1:9")


def test_every_command_has_help() -> None:
    for command in (
        ("agent", "create"),
        ("agent", "list"),
        ("agent", "show"),
        ("agent", "disable"),
        ("agent", "enable"),
        ("agent", "offboard"),
        ("agent", "join-token"),
        ("revoke", "token"),
        ("revoke", "agent"),
        ("revoke", "task"),
        ("revoke", "runtime"),
        ("keys", "rotate"),
        ("admin-token", "create"),
        ("admin-token", "list"),
        ("admin-token", "revoke"),
    ):
        code, out, _ = run(*command, "--help")
        assert code == 0 and "Usage:" in out
        assert "--server" in out or command[0] == "admin-token"


def test_admin_token_create_works_on_the_database(tmp_path: Path) -> None:
    code, out, err = run("admin-token", "create", "--data-dir", str(tmp_path / "d"), "-n", "ops")
    assert code == 0, err
    token = out.strip()
    assert token.startswith("tat_") and "shown only this once" in err

    async def check() -> str | None:
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'd' / 'tether.db'}")
        try:
            sealer = RowSealer(load_master_key(tmp_path / "d"))
            found = await find_admin_token(store.engine, sealer, token, now=datetime.now(UTC))
            return None if found is None else found.name
        finally:
            await store.close()

    assert asyncio.run(check()) == "ops"


def test_admin_token_create_with_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "tether.yaml"
    config.write_text("identity: {token_lifetime: -1}\n")
    code, _, err = run("admin-token", "create", "--config", str(config))
    assert code == 2
    assert err.startswith(f"tether: error: {config}: identity.token_lifetime:")
    assert err.count("\n") == 1


def test_admin_token_revoke_needs_the_master_key_and_a_live_token(tmp_path: Path) -> None:
    data = tmp_path / "d"
    code, _, err = run("admin-token", "list", "--data-dir", str(data), "--json")  # a typo, say
    assert (code, err) == (2, f"tether: error: no database at {data / 'tether.db'}: check "
                              "--data-dir or --config\n")  # fmt: skip
    assert not data.exists()  # no empty database made and reported on
    code, _, err = run("admin-token", "revoke", "abc", "--data-dir", str(data))
    assert code == 2 and err.startswith("tether: error: no master key") and err.count("\n") == 1
    code, out, _ = run("admin-token", "create", "--data-dir", str(data))
    code, listed, _ = run("admin-token", "list", "--data-dir", str(data), "--json")
    assert code == 0 and '"name": "cli"' in listed
    token_id = out.strip().removeprefix("tat_").partition(".")[0]
    assert run("admin-token", "revoke", token_id, "--data-dir", str(data))[0] == 0
    code, _, err = run("admin-token", "revoke", token_id, "--data-dir", str(data))
    assert code == 1 and "revoked already" in err and "Traceback" not in err
