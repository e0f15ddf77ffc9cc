"""``tether audit sinks``: cursors, lag and errors of the configured sinks, from the database."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from tests.audit_export.conftest import sample_event
from tether.audit.log import AuditLog
from tether.audit.sinks import cursors
from tether.audit.sinks.base import DeliveryLoop
from tether.audit.sinks.config import JsonlSinkConfig
from tether.audit.sinks.jsonl import JsonlSink
from tether.cli.main import app
from tether.identity.keys import SigningKey
from tether.store import Store

CONFIG = """\
data_dir: data
audit:
  sinks:
    - {name: file, kind: jsonl, path: out/audit.jsonl, batch_size: 4}
    - {name: hook, kind: webhook, url: "https://siem.example/in", secret_env: HOOK_SECRET}
    - {name: paused, kind: jsonl, path: out/paused.jsonl, enabled: false}
"""


async def _prepare(data_dir: Path, out: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{data_dir / 'tether.db'}")
    key = SigningKey.generate(time.time())
    log = AuditLog(store.engine, lambda: key)
    await log.start()
    try:
        for i in range(10):
            await log.append(sample_event(i))
    finally:
        await log.close()
    config = JsonlSinkConfig(name="file", kind="jsonl", path=out)
    loop = DeliveryLoop(JsonlSink(config), store.engine, batch_size=4)
    assert await loop.deliver_once() == 4
    await loop.sink.close()
    async with store.engine.begin() as conn:
        await cursors.ensure_cursor(conn, "gone", 10, datetime.now(UTC))
        await cursors.record_error(conn, "file", "disk full", datetime.now(UTC))
    await store.close()


def test_sinks_show_lag_state_and_errors(tmp_path: Path) -> None:
    config = tmp_path / "tether.yaml"
    config.write_text(CONFIG)
    (tmp_path / "data").mkdir()
    asyncio.run(_prepare(tmp_path / "data", tmp_path / "out" / "audit.jsonl"))
    runner = CliRunner()

    done = runner.invoke(app, ["audit", "sinks", "-c", str(config), "--json"])
    assert done.exit_code == 0, done.output
    rows = {row["name"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert sorted(rows) == ["file", "gone", "hook", "paused"]
    assert (rows["file"]["last_seq"], rows["file"]["lag"], rows["file"]["head_seq"]) == (4, 6, 10)
    assert (rows["file"]["state"], rows["file"]["last_error"]) == ("failing", "disk full")
    assert (rows["hook"]["kind"], rows["hook"]["lag"], rows["hook"]["state"]) == (
        "webhook",
        10,
        "ok",
    )
    assert rows["paused"]["state"] == "disabled"
    assert (rows["gone"]["state"], rows["gone"]["lag"]) == ("not configured", 0)

    table = runner.invoke(app, ["audit", "sinks", "-c", str(config)])
    assert "disk full" in table.stdout and "webhook" in table.stdout

    assert (
        runner.invoke(app, ["audit", "sinks", "-c", str(config), "--max-lag", "5"]).exit_code == 1
    )


def test_sinks_without_a_database_exit_2(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["audit", "sinks", "-d", str(tmp_path / "none")])
    assert done.exit_code == 2
    assert "no Tether database" in done.stderr
