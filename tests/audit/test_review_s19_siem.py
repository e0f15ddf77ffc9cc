"""Review s19 (SIEM export): ``tether audit prune`` and the sinks.

A disabled sink keeps its cursor so that it resumes from it when enabled again. Prune used
to ask only the enabled sinks: pruned past a disabled one, that sink, enabled again, read
the events after its cursor, found the first one left and went on from there, silently
skipping every pruned event (the "no gap" of docs/siem.md did not hold).
"""

from __future__ import annotations

import json
import logging
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from tests.audit.conftest import MASTER, MASTER_KEY, NO_HEAD_FILE, open_trail
from tether.audit.prune import prune
from tether.audit.sinks.base import DeliveryLoop
from tether.audit.sinks.config import JsonlSinkConfig
from tether.audit.sinks.cursors import audit_sink_cursors
from tether.audit.sinks.jsonl import JsonlSink

SINK = """audit:
  sinks:
    - name: archive
      kind: jsonl
      path: {path}
      enabled: {enabled}
"""


async def test_prune_does_not_go_past_a_disabled_sinks_cursor(
    tether_bin: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}"
    trail = await open_trail(url)
    env = {**clean_env, "TETHER_MASTER_KEY": MASTER_KEY.material.hex()}
    config = tmp_path / "tether.yaml"
    base = f"database_url: {url}\ndata_dir: {tmp_path / 'data'}\n"

    def prune(sinks: str, archive: str) -> subprocess.CompletedProcess[str]:
        config.write_text(base + sinks)
        command = [str(tether_bin), "audit", "prune", "--through", "20", "--config",
                   str(config), "--archive", str(tmp_path / archive)]  # fmt: skip
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    try:
        await trail.append(25)
        async with trail.store.engine.begin() as conn:  # the sink delivered up to 5
            await conn.execute(
                insert(audit_sink_cursors).values(
                    name="archive", last_seq=5, updated_at=datetime.now(UTC)
                )
            )
        paused = SINK.format(path=tmp_path / "out.jsonl", enabled="false")
        refused = prune(paused, "a.jsonl")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "archive (at 5, disabled: remove it from audit.sinks" in refused.stderr
        assert not (tmp_path / "a.jsonl").exists()

        # Removed from the configuration, the operator gave it up: the prune goes on.
        done = prune("", "b.jsonl")
        assert done.returncode == 0, done.stderr
        assert "pruned events 1 to 20 (20 events)" in done.stdout
    finally:
        await trail.log.close()
        await trail.store.close()


async def test_a_disabled_sink_that_never_ran_does_not_stop_a_prune(
    tether_bin: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    """Without a cursor it has delivered nothing and will start where it is told
    (``start``): nothing of it to protect."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}"
    trail = await open_trail(url)
    env = {**clean_env, "TETHER_MASTER_KEY": MASTER_KEY.material.hex()}
    config = tmp_path / "tether.yaml"
    config.write_text(
        f"database_url: {url}\ndata_dir: {tmp_path / 'data'}\n"
        + SINK.format(path=tmp_path / "out.jsonl", enabled="false")
    )
    try:
        await trail.append(25)
        command = [str(tether_bin), "audit", "prune", "--through", "20", "--config",
                   str(config), "--archive", str(tmp_path / "a.jsonl")]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        await trail.log.close()
        await trail.store.close()


async def test_a_sink_that_meets_pruned_events_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sink added with ``start: beginning`` after a prune (or whose cursor row was
    deleted) starts at the first event left: its receiver saw seq 21 first and nothing said
    why 1 to 20 never came. Now the node's log does, once."""
    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    try:
        await trail.append(25)
        await prune(
            trail.engine, through=20, archive=tmp_path / "a.jsonl", key=trail.key,
            cipher=MASTER, head_file=NO_HEAD_FILE, sinks=(), now=datetime.now(UTC),
        )  # fmt: skip
        out = tmp_path / "out.jsonl"
        sink = JsonlSink(JsonlSinkConfig(name="late", kind="jsonl", path=out))
        loop = DeliveryLoop(sink, trail.engine, batch_size=100)
        with caplog.at_level(logging.WARNING, logger="tether.audit.sinks.base"):
            assert await loop.deliver_once() == 5
            assert await loop.deliver_once() == 0
        await sink.close()
        said = [r.getMessage() for r in caplog.records if "no longer in the trail" in r.message]
        assert said == [
            "audit sink late: events 1 to 20 are no longer in the trail (pruned: they are in "
            "the archives of tether audit prune) and were not sent to this sink"
        ]
        sent = [json.loads(line)["metadata"]["sequence"] for line in out.read_text().splitlines()]
        assert sent == [21, 22, 23, 24, 25]
    finally:
        await trail.log.close()
        await trail.store.close()
