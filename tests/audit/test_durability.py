"""Durability: a real process appending at full speed is killed with SIGKILL; every event it
acknowledged is in the database, the chain verifies, and a restarted writer continues it."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import select

from tests.audit.conftest import sample, store_signing_key
from tether.audit.log import AuditLog
from tether.audit.schema import audit_events
from tether.audit.verify import verify_trail
from tether.identity.keys import SigningKey
from tether.store import Store

ROOT = Path(__file__).resolve().parents[2]
ACKS_BEFORE_KILL = 3000


def _key_text(key: SigningKey) -> str:
    raw = key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _run_and_kill(url: str, key: SigningKey, synchronous: str) -> list[int]:
    """Start the appender, SIGKILL it after ACKS_BEFORE_KILL acknowledgements; every
    seq it acknowledged (what it printed before it died)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.audit.appender", url, _key_text(key), synchronous, "64"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read() if child.stderr else ""
        acked: list[int] = []
        deadline = time.monotonic() + 240
        while len(acked) < ACKS_BEFORE_KILL:
            line = child.stdout.readline()
            assert line, f"the appender died: {child.stderr.read() if child.stderr else ''}"
            acked.append(int(line))
            assert time.monotonic() < deadline, "the appender is too slow"
        os.kill(child.pid, signal.SIGKILL)  # mid-stream: emitters are waiting on a commit
        acked += [int(line) for line in child.stdout.read().split()]
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_sigkill_loses_no_acknowledged_event(store_url: str, synchronous: str) -> None:
    if synchronous == "normal" and not store_url.startswith("sqlite"):
        synchronous = "full"  # the setting is SQLite's; PostgreSQL runs once more as is
    store = await Store.open(store_url)
    key = SigningKey.generate(time.time())
    await store_signing_key(store.engine, key)
    try:
        acked = _run_and_kill(store_url, key, synchronous)
        assert len(acked) == len(set(acked)) >= ACKS_BEFORE_KILL
        async with store.engine.connect() as conn:
            stored = set((await conn.execute(select(audit_events.c.seq))).scalars())
            report = await verify_trail(conn)
        assert set(acked) <= stored, f"acknowledged but lost: {sorted(set(acked) - stored)[:10]}"
        assert report.ok, report.findings[:5]
        assert report.events == len(stored) == max(stored)  # no gap either
        assert report.last_checkpoint_seq is not None and report.last_checkpoint_seq >= 500

        # The restart: a new writer continues the same chain.
        log = AuditLog(store.engine, lambda: key, checkpoint_every=500)
        await log.start()
        try:
            resumed = [await log.append(sample(i)) for i in range(5)]
        finally:
            await log.close()
        assert resumed[0].seq == max(stored) + 1
        async with store.engine.connect() as conn:
            after = await verify_trail(conn)
        assert after.ok, after.findings[:5]
        assert (after.events, after.unanchored) == (len(stored) + 5, 0)
    finally:
        await store.close()
