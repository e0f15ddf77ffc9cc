"""Fixtures of the export tests: a real audit trail (store + AuditLog), test certificates."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.audit_export.certs import Certs, make_certs
from tether.audit.events import AuditEvent
from tether.audit.log import AuditLog
from tether.identity.keys import SigningKey
from tether.store import Store

KINDS_CYCLE = ("ssh.command", "http.exchange", "sql.statement", "decision", "file.transfer")


def sample_event(i: int) -> AuditEvent:
    """The i-th event of a realistic mix; its number is in ``action.n`` (and its seq later)."""
    kind = KINDS_CYCLE[i % len(KINDS_CYCLE)]
    action = {
        "ssh.command": {"command": f"echo {i}", "n": i},
        "http.exchange": {"method": "GET", "path": f"/items/{i}", "n": i},
        "sql.statement": {"statement": "SELECT * FROM t WHERE id = ?", "n": i},
        "decision": {"ssh": {"command": "rm -rf /"}, "n": i},
        "file.transfer": {"op": "read", "path": f"/srv/f{i}", "size": i, "n": i},
    }[kind]
    return AuditEvent(
        kind=kind,
        agent="deploy-bot",
        runtime="rt-1",
        session_id=f"s-{i // 100}",
        source_ip="10.1.2.3",
        target="web-1",
        action=action,
        decision="deny" if kind == "decision" else "allow",
        policy_version="sha256:test",
    )


@dataclass
class Trail:
    store: Store
    log: AuditLog
    emitted: int = 0

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return self.store.engine

    async def emit(self, count: int) -> list[AuditEvent]:
        """Append ``count`` events concurrently (group-committed); returns them as stored."""
        first = self.emitted
        self.emitted += count
        return list(
            await asyncio.gather(
                *(self.log.append(sample_event(i)) for i in range(first, first + count))
            )
        )


@pytest.fixture
async def trail(tmp_path: Path) -> AsyncIterator[Trail]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    key = SigningKey.generate(time.time())
    log = AuditLog(store.engine, lambda: key, sqlite_synchronous="normal")
    await log.start()
    try:
        yield Trail(store, log)
    finally:
        await log.close()
        await store.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` (every 50 ms) until true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def seqs_check(received: list[int], last: int, batch_size: int) -> int:
    """Every seq 1..last received, in order, duplicates only as re-sent batches (at most one
    batch's worth); returns the number of duplicates."""
    for before, after in itertools.pairwise(received):
        assert after == before + 1 or after <= before, f"{before} then {after}: a gap"
    first_seen: list[int] = []
    seen: set[int] = set()
    for seq in received:
        if seq not in seen:
            seen.add(seq)
            first_seen.append(seq)
    assert first_seen == list(range(1, last + 1)), "a gap or a reordering"
    duplicates = len(received) - len(first_seen)
    assert duplicates <= batch_size, f"{duplicates} duplicates: more than one batch"
    return duplicates
