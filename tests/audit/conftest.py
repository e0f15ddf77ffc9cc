"""Fixtures of the audit core tests: a real store on each backend, a stored signing key, the
writer and the emitter, and a way to tamper with the tables as someone with database access."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.audit.emit import Auditor, Subject
from tether.audit.events import AuditEvent
from tether.audit.log import AuditLog
from tether.audit.verify import VerifyReport, verify_trail
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.keys import SigningKey
from tether.store import Store
from tether.store import keys as stored_keys

TABLES = ("audit_events", "audit_checkpoints", "audit_prunes")
NO_HEAD_FILE = Path("/nonexistent/tether-tests/no.audit-head")


# The master key of the trails these tests open (a key sealed under another one is not trusted
# by ``verify_trail(..., cipher=MASTER)``).
MASTER_KEY = MasterKey(os.urandom(32), "test")
MASTER = EnvelopeCipher(MASTER_KEY)


async def store_signing_key(
    engine: AsyncEngine,
    key: SigningKey,
    state: str = "active",
    cipher: EnvelopeCipher | None = None,
) -> None:
    """Record ``key`` as an access-token key, as the identity keystore does: its private part
    sealed under ``cipher`` (default: a master key of its own, one nobody verifies with)."""
    cipher = cipher or EnvelopeCipher(MasterKey(os.urandom(32), "test"))
    now = datetime.now(UTC)
    row = stored_keys.StoredKey(
        kid=key.kid,
        purpose="access-token",
        algorithm="EdDSA",
        public=json.dumps(key.public_jwk(), sort_keys=True),
        private_encrypted=cipher.encrypt(
            key.private_key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            ),
            purpose="signing-key:access-token",
            name=key.kid,
        ),
        created_at=now,
        active_from=now,
        state=state,  # type: ignore[arg-type]
    )
    async with engine.begin() as conn:
        await stored_keys.insert_signing_key(conn, cipher.sealer, row)


def sample(i: int, **fields: Any) -> AuditEvent:
    """The i-th event of a small realistic mix."""
    kinds = ("http.exchange", "ssh.command", "sql.statement", "decision")
    values: dict[str, Any] = {
        "kind": kinds[i % len(kinds)],
        "agent": f"agent-{i % 3}",
        "runtime": "rt-1",
        "task": f"T-{i % 5}",
        "target": f"target-{i % 2}",
        "action": {"n": i, "path": f"/items/{i}"},
        "decision": "allow" if i % 4 else "deny",
        "session_id": f"s-{i // 10}",
        "duration_ms": i / 4,
    }
    values.update(fields)
    return AuditEvent(**values)


@dataclass
class Trail:
    """A store with an audit trail being written."""

    url: str
    store: Store
    log: AuditLog
    key: SigningKey
    auditor: Auditor

    @property
    def engine(self) -> AsyncEngine:
        return self.store.engine

    async def append(self, count: int, start: int = 0) -> list[AuditEvent]:
        return [await self.log.append(sample(i)) for i in range(start, start + count)]

    async def verify(self, head_file: Path | None = None) -> VerifyReport:
        """Verify the trail: against ``head_file`` when given, else against no head file
        at all (the head file has its own tests, in test_head.py)."""
        async with self.engine.connect() as conn:
            return await verify_trail(conn, head_file=head_file or NO_HEAD_FILE, cipher=MASTER)

    async def tamper(self, *statements: str, params: Sequence[dict[str, Any]] = ()) -> None:
        """Run SQL as a database administrator would: append-only triggers dropped first."""
        await drop_append_only_triggers(self.engine)
        async with self.engine.begin() as conn:
            for index, statement in enumerate(statements):
                await conn.execute(text(statement), params[index] if params else {})


async def refused_statements(engine: AsyncEngine, statements: Sequence[str]) -> None:
    """Each of ``statements``, run alone, is refused by the append-only triggers."""
    from sqlalchemy.exc import DBAPIError

    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))


async def drop_append_only_triggers(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in TABLES:
            if engine.dialect.name == "postgresql":
                for trigger in ("append_only", "no_truncate"):
                    await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_{trigger} ON {table}"))
            else:
                for verb in ("update", "delete"):
                    await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{verb}"))


async def open_trail(url: str, **log_options: Any) -> Trail:
    store = await Store.open(url)
    key = SigningKey.generate(time.time())
    await store_signing_key(store.engine, key, cipher=MASTER)
    options: dict[str, Any] = {"checkpoint_every": 10, "checkpoint_interval": 3600.0}
    options.update(log_options)
    log = AuditLog(store.engine, lambda: key, **options)
    await log.start()
    return Trail(url, store, log, key, Auditor(log))


@pytest.fixture
async def trail(store_url: str) -> AsyncIterator[Trail]:
    """A trail on SQLite, then on PostgreSQL; checkpoints every 10 events."""
    opened = await open_trail(store_url)
    try:
        yield opened
    finally:
        await opened.log.close()
        await opened.store.close()


@pytest.fixture
async def sqlite_trail(tmp_path: Any) -> AsyncIterator[Trail]:
    opened = await open_trail(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    try:
        yield opened
    finally:
        await opened.log.close()
        await opened.store.close()


AGENT = Subject(agent="billing-bot", runtime="k8s/prod/b-1", task="T-118", session_id="sess-1")


@pytest.fixture
async def written(store_url: str) -> AsyncIterator[Trail]:
    """A trail of 25 events (checkpoints at 10 and 20), on SQLite then on PostgreSQL."""
    trail = await open_trail(store_url)
    try:
        await trail.append(25)
        yield trail
    finally:
        await trail.log.close()
        await trail.store.close()


def problems(report: VerifyReport) -> list[tuple[int, str]]:
    """A report's findings as (seq, problem)."""
    return [(f.seq, f.problem) for f in report.findings]
