"""A probe of a red-team review: an event planted with a plain INSERT below any seq the
verifier started from was never read, and the trail verified; now every row is read."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sqlalchemy import text

from tests.audit.conftest import Trail
from tether.audit.canonical import event_hash, json_text
from tether.audit.events import AuditEvent
from tether.audit.store import sqlite_time_text


def tether(tether_bin: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tether_bin), "audit", *args], env=env, capture_output=True, text=True, timeout=120
    )


def data_dir(trail: Trail) -> str:
    return str(Path(trail.url.removeprefix("sqlite+aiosqlite:///")).parent)


async def test_an_event_planted_below_the_verifier_start_is_not_reported(
    sqlite_trail: Trail, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    """verify reads rows `WHERE seq > -(2**62)`: a row planted at a seq below that (a BIGINT
    holds down to -(2**63)) is never read, so the trail verifies, while `search` shows the
    forged event to an investigator."""
    await sqlite_trail.append(20)
    await sqlite_trail.log.checkpoint()
    where = ["--data-dir", data_dir(sqlite_trail)]
    assert tether(tether_bin, clean_env, "verify", *where).returncode == 0

    seq = -(2**62) - 1
    forged = AuditEvent(kind="admin.change", agent="billing-bot", user="admin-token:alice",
                        target="agent:billing-bot", action={"name": "agent.create",
                        "outcome": "success"}, decision="allow")  # fmt: skip
    prev = "0" * 64
    digest = event_hash(forged, seq, prev)
    # A plain INSERT: the append-only triggers (still in place) refuse only UPDATE and DELETE.
    async with sqlite_trail.engine.begin() as conn:
        await conn.execute(text(
        "INSERT INTO audit_events (seq, id, time, kind, agent, runtime, task, user, actor_chain,"
        " target, action, decision, rule, reason, policy_version, session_id, source_ip,"
        " bytes_in, bytes_out, rows, duration_ms, detail, prev_hash, hash) VALUES (:seq, :id,"
        " :time, :kind, :agent, NULL, NULL, :user, '[]', :target, :action, :decision, NULL,"
        " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{}', :prev, :hash)",
        ), {"seq": seq, "id": forged.id, "time": sqlite_time_text(forged.time),
                 "kind": forged.kind, "agent": forged.agent, "user": forged.user,
                 "target": forged.target, "action": json_text(forged.action),
                 "decision": forged.decision, "prev": prev, "hash": digest})  # fmt: skip

    found = tether(tether_bin, clean_env, "search", "--user", "admin-token:alice", "--json", *where)
    assert found.returncode == 0, found.stderr
    shown = [json.loads(line) for line in found.stdout.splitlines() if line.strip()]
    assert [e["seq"] for e in shown] == [seq]  # the planted event is part of the trail's answers

    report = tether(tether_bin, clean_env, "verify", "--json", *where)
    assert report.returncode == 1, report.stdout
    findings = json.loads(report.stdout)["findings"]
    assert any(f["seq"] == seq and f["problem"] == "order" for f in findings), findings


async def test_a_row_without_an_integer_seq_is_a_finding_not_a_crash(
    sqlite_trail: Trail, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    """SQLite keeps a text in a BIGINT column: such a planted row is reported, the rest of
    the trail still checked (no traceback)."""
    await sqlite_trail.append(3)
    where = ["--data-dir", data_dir(sqlite_trail)]
    async with sqlite_trail.engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO audit_events SELECT 'zz', id || 'x', time, kind, agent, runtime, task,"
            " user, actor_chain, target, action, decision, rule, reason, policy_version,"
            " session_id, source_ip, bytes_in, bytes_out, rows, duration_ms, detail, prev_hash,"
            " hash FROM audit_events WHERE seq = 3"
        ))  # fmt: skip
    report = tether(tether_bin, clean_env, "verify", "--json", *where)
    assert report.returncode == 1, (report.stdout, report.stderr)
    findings = json.loads(report.stdout)["findings"]
    assert [f["problem"] for f in findings] == ["unreadable"], findings
