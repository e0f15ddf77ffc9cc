"""``ssh.recording.retention`` (tether.proxy.ssh.retention): a broker with a retention removes,
at its start and then on its schedule, the days of recordings that ended that long ago, by the
rules of ``tether sessions prune``; the setting is checked at load."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.proxy_ssh.conftest import RULES
from tests.proxy_ssh.harness import build_stack
from tether.audit.recordings import Recorder, RecordingMeta
from tether.config import ConfigError, load_settings
from tether.proxy.ssh.config import SshRecordingConfig
from tether.proxy.ssh.retention import keep_recordings, prune_once

NOW = datetime.now(UTC)


def _recorded(root: Path, session_id: str, days_ago: int) -> Path:
    started = NOW - timedelta(days=days_ago)
    recorder = Recorder.start(session_id, RecordingMeta(agent="bot"), root=root, now=started)
    recorder.output(b"$ uptime\r\n")
    recorder.close(exit_status=0)
    return recorder.cast_path


def test_the_retention_is_a_day_at_least(tmp_path: Path) -> None:
    assert SshRecordingConfig().retention == 0  # every recording kept unless asked
    assert SshRecordingConfig(retention=86400).retention == 86400
    config = tmp_path / "tether.yaml"
    config.write_text("ssh:\n  recording:\n    retention: 3600\n")
    with pytest.raises(ConfigError, match="at least 86400 seconds"):
        load_settings(config)
    config.write_text("ssh:\n  recording:\n    retention: 7776000\n")
    assert load_settings(config).ssh.recording.retention == 7776000


async def test_a_broker_prunes_at_its_start(tmp_path: Path) -> None:
    root = tmp_path / "data" / "recordings"
    old, recent = _recorded(root, "old", 30), _recorded(root, "recent", 0)
    stack = await build_stack(tmp_path, RULES, recording=SshRecordingConfig(retention=2 * 86400))
    try:
        deadline = time.monotonic() + 10
        while old.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not old.exists() and not old.parent.exists()
        assert recent.exists()
    finally:
        await stack.close()
    assert stack.broker._keeper is not None and stack.broker._keeper.done()


async def test_each_pass_prunes_what_aged_since(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    root.mkdir()
    keeper = asyncio.create_task(keep_recordings(root, 86400, every=0.05))
    try:
        await asyncio.sleep(0.1)
        later = _recorded(root, "later", 5)  # appears after the first pass
        deadline = time.monotonic() + 10
        while later.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not later.exists()
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


def test_a_pass_logs_what_it_did(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "recordings"
    _recorded(root, "a", 40)
    _recorded(root, "b", 40)
    with caplog.at_level(logging.INFO, logger="tether.proxy.ssh.retention"):
        done = prune_once(root, 30 * 86400)
    assert [r.error for r in done] == [None]
    assert "removed 1 day(s) that ended before" in caplog.text and "2 session(s)" in caplog.text
    assert prune_once(tmp_path / "absent", 86400) == []
