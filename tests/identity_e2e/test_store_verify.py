"""``tether store verify`` (tether.store.integrity.check), on SQLite and PostgreSQL: a database
as Tether wrote it has no finding; each change a database writer without the master key can
make (a planted owner, a cleared seal, a ciphertext of another key, a deleted revocation) is
named, one line each, and the command exits 1. Every line names a row a node refuses."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.identity_e2e.conftest import Agent, Stack
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.store import integrity
from tether.store.integrity import check
from tether.vault.secrets import SecretStore
from tether.vault.targets import TargetStore

HTTP = {"base_url": "https://api.example.com", "credential": {"type": "bearer", "secret": "k"}}


async def _sql(stack: Stack, statement: str) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(text(statement))


async def test_every_row_a_node_refuses_is_named(
    stack: Stack, bot: Agent, store_url: str, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    await stack.service.revoke("task", "T-gone", reason="done", by="admin")
    await SecretStore(stack.engine, stack.cipher).put("api/key", b"s3cret")
    await TargetStore(stack.engine, stack.cipher.sealer).add("api", "http", HTTP)
    other = await stack.new_agent("other")
    clean = await check(stack.engine, stack.cipher)
    assert clean.findings == []
    assert clean.checked["agents"] == 2 and clean.checked["credentials"] >= 1

    await _sql(stack, f"UPDATE agents SET owner = 'eve' WHERE id = '{other.id}'")
    await _sql(stack, "UPDATE targets SET seal = NULL WHERE name = 'api'")
    await SecretStore(stack.engine, EnvelopeCipher(MasterKey(secrets.token_bytes(32), "x"))).put(
        "stray", b"x"
    )
    await _sql(stack, "DELETE FROM revocations WHERE value = 'T-gone'")
    found = await check(stack.engine, stack.cipher)
    assert found.findings[:2] == ["unsealed targets api", f"refused agents {other.id} (its seal "
                                  "does not verify)"]  # fmt: skip
    assert found.findings[2].startswith("unreadable vault_secrets stray (encrypted under "
                                        "another master key")  # fmt: skip
    assert found.findings[3] == (
        "refused revocation_ledger 1 (the revocations do not match their ledger: one was "
        "deleted, changed or added outside Tether)"
    )
    assert len(found.findings) == 4

    if not store_url.startswith("sqlite"):
        return
    # The command, on the same database: the same lines, exit 1; without the key, exit 2.
    data_dir = Path(store_url.split("///", 1)[1]).parent
    assert stack.master is not None
    key = base64.urlsafe_b64encode(stack.master.material).rstrip(b"=").decode()
    env = {**clean_env, "TETHER_DATABASE_URL": store_url}
    argv = [str(tether_bin), "store", "verify", "--data-dir", str(data_dir)]
    done = subprocess.run(argv, env={**env, "TETHER_MASTER_KEY": key}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == found.findings
    assert done.stderr.endswith(" row(s) checked, 4 finding(s)\n")
    as_json = subprocess.run([*argv, "--json"], env={**env, "TETHER_MASTER_KEY": key},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert as_json.returncode == 1 and as_json.stderr == ""
    document = json.loads(as_json.stdout)
    assert (document["ok"], document["findings"]) == (False, found.findings)
    assert document["checked"]["agents"] == 2
    keyless = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert keyless.returncode == 2 and keyless.stderr.startswith("tether: error: no master key")


async def test_a_clean_database_passes_the_command(
    stack: Stack, bot: Agent, tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    assert stack.master is not None and stack.engine.dialect.name in ("sqlite", "postgresql")
    key = base64.urlsafe_b64encode(stack.master.material).rstrip(b"=").decode()
    env = {**clean_env, "TETHER_DATABASE_URL": str(stack.engine.url.render_as_string(False)),
           "TETHER_MASTER_KEY": key}  # fmt: skip
    done = subprocess.run([str(tether_bin), "store", "verify", "--data-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "" and done.stderr.endswith(" row(s) checked, 0 finding(s)\n")


async def test_the_same_findings_a_row_at_a_time(
    stack: Stack, bot: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``check`` reads every table a page at a time (bounded memory): pages of one row find
    exactly what whole pages do, every row counted once."""
    for name in ("a", "b", "c"):
        await stack.new_agent(name)
    async with stack.engine.begin() as conn:
        await conn.execute(text("UPDATE agents SET owner = 'eve' WHERE id IN ('a', 'c')"))
        await conn.execute(text("UPDATE agents SET seal = NULL WHERE id = 'b'"))
    whole = await check(stack.engine, stack.cipher)
    monkeypatch.setattr(integrity.pages, "__kwdefaults__", {"size": 1})
    one_by_one = await check(stack.engine, stack.cipher)
    assert one_by_one.findings == whole.findings
    assert one_by_one.checked == whole.checked and whole.checked["agents"] == 4
    assert whole.findings == [
        "refused agents a (its seal does not verify)",
        "unsealed agents b",
        "refused agents c (its seal does not verify)",
    ]
