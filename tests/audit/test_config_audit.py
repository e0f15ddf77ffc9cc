"""The ``audit`` section: defaults, the environment, errors naming the key, and a node's
auditor built from it (configured redaction applied, writer settings passed on)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.audit.conftest import store_signing_key
from tether.audit.emit import Subject
from tether.audit.startup import AuditStartError, start_auditor
from tether.config import ConfigError, load_settings
from tether.identity.keys import SigningKey
from tether.store import Store


def test_defaults_and_the_environment(tmp_path: Path) -> None:
    audit = load_settings(environ={}, cwd=tmp_path).audit
    assert (audit.checkpoint_every, audit.checkpoint_interval, audit.max_batch) == (1000, 60, 1000)
    assert audit.sqlite_synchronous == "full"
    assert "password" in audit.sensitive_fields and audit.sensitive_headers == []
    environ = {"TETHER_AUDIT__CHECKPOINT_EVERY": "50", "TETHER_AUDIT__SQLITE_SYNCHRONOUS": "normal"}
    audit = load_settings(environ=environ, cwd=tmp_path).audit
    assert (audit.checkpoint_every, audit.sqlite_synchronous) == (50, "normal")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("audit:\n  sqlite_synchronous: off\n", "audit.sqlite_synchronous: Input should be"),
        ("audit:\n  checkpoint_every: 0\n", "audit.checkpoint_every:"),
        ("audit:\n  sensitive_fields: []\n", "audit.sensitive_fields:"),
        ("audit:\n  sensitive_headers: ['bad header']\n", "audit.sensitive_headers.0:"),
        ("audit:\n  checkpoint_evry: 5\n", "audit.checkpoint_evry: unknown setting"),
        (
            "audit:\n  sinks:\n    - {name: a, kind: jsonl, path: x}\n"
            "    - {name: a, kind: jsonl, path: y}\n",
            "sink names must be unique: a",
        ),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "tether.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={}, cwd=tmp_path)
    assert str(raised.value).startswith(str(config))
    assert message in str(raised.value)


async def test_the_node_auditor_follows_the_section(tmp_path: Path) -> None:
    config = tmp_path / "tether.yaml"
    config.write_text(
        "audit:\n  checkpoint_every: 2\n  sensitive_headers: [X-Tenant-Key]\n"
        "  sensitive_fields: [pin]\n"
    )
    settings = load_settings(config, environ={}, cwd=tmp_path)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    key = SigningKey.generate(time.time())
    await store_signing_key(store.engine, key)
    auditor = await start_auditor(settings.audit, store.engine, lambda: key)
    try:
        who = Subject(agent="bot")
        headers = {"X-Tenant-Key": "k", "Accept": "a"}
        await auditor.emit(
            auditor.http_exchange_event(
                who, target="api", method="GET", path="/", status=200, request_headers=headers
            )
        )
        await auditor.mcp_call(who, target="t", tool="x", arguments={"pin": 1234, "password": "p"})
        assert await auditor.log.checkpoint() is None  # event 2 was checkpointed already
    finally:
        await auditor.log.close()
    from tether.audit.store import events_after

    async with store.engine.connect() as conn:
        first, second = await events_after(conn, 0)
    await store.close()
    assert first.action["request_headers"] == {"X-Tenant-Key": "[REDACTED]", "Accept": "a"}
    # The configured list replaces the default one: "password" is no longer a field name.
    assert second.action["arguments"] == {"pin": "[REDACTED]", "password": "p"}


async def test_an_audit_trail_that_cannot_be_opened_stops_the_node(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(AuditStartError, match="the audit trail cannot be opened"):
        await start_auditor(settings.audit, engine, lambda: SigningKey.generate(0.0))
    await engine.dispose()
