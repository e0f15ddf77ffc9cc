"""Real clients through the broker: psycopg 3 (simple, prepared, server-side binding)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from .conftest import Broker


def _run(fn, *args):  # type: ignore[no-untyped-def]
    return asyncio.to_thread(fn, *args)


async def test_psycopg_simple_and_extended(broker: Broker) -> None:
    agent = await broker.agent()
    dsn = broker.dsn(agent)

    def work() -> list[object]:
        with psycopg.connect(**dsn, autocommit=True) as conn:
            simple = conn.execute("SELECT count(*) FROM items").fetchone()
            bound = conn.execute("SELECT name FROM items WHERE id = %s", (3,)).fetchone()
            prepared = [
                conn.execute("SELECT id FROM items WHERE id = %s", (i,), prepare=True).fetchone()
                for i in (1, 2, 3, 4, 5, 6)
            ]
            return [simple, bound, prepared]

    simple, bound, prepared = await _run(work)
    assert simple == (10,)
    assert bound == ("item 3",)
    assert prepared == [(i,) for i in (1, 2, 3, 4, 5, 6)]


async def test_psycopg_denied(broker: Broker) -> None:
    agent = await broker.agent()
    dsn = broker.dsn(agent)

    def work() -> tuple[str, str, object]:
        with psycopg.connect(**dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as simple:
                conn.execute("SELECT * FROM secrets")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as bound:
                conn.execute("SELECT * FROM secrets WHERE id = %s", (1,))
            after = conn.execute("SELECT 1").fetchone()
            return str(simple.value), str(bound.value), after

    simple, bound, after = await _run(work)
    assert "denied-by-rule" in simple and "no-secrets" in simple
    assert "no-secrets" in bound
    assert after == (1,)


async def test_audit_per_statement(broker: Broker) -> None:
    agent = await broker.agent()
    dsn = broker.dsn(agent)

    def work() -> None:
        with psycopg.connect(**dsn, autocommit=True) as conn:
            conn.execute("SELECT name FROM items WHERE id = 7 AND name <> 'zz'")
            conn.execute("SELECT name FROM items WHERE id = %s", (8,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT value FROM secrets WHERE value = 'hunter2'")
            conn.execute("SELECT 1; SELECT count(*) FROM items WHERE id < 3")

    await _run(work)
    await broker.wait_for("session.end")
    events = await broker.events("sql.statement")
    decided = [e for e in events if e["action"]["phase"] == "decided"]
    done = [e for e in events if e["action"]["phase"] == "completed"]
    assert [e["decision"] for e in decided] == ["allow", "allow", "deny", "allow", "allow"]
    assert [e["action"]["query"] for e in decided[3:]] == [
        "SELECT ?",
        "SELECT count(*) FROM items WHERE id < ?",
    ]
    first = decided[0]
    assert first["action"]["query"] == "SELECT name FROM items WHERE id = ? AND name <> ?"
    assert first["action"]["relations"] == ["public.items"]
    assert first["action"]["classes"] == ["select"]
    assert first["rule"] == "read-public" and first["policy_version"]
    assert decided[1]["action"]["params"] == 1
    assert decided[2]["rule"] == "no-secrets"
    assert "hunter2" not in str(events)
    results = [r for e in done for r in e["action"]["results"]]
    assert [r["rows"] for r in results] == [1, 1, 1, 1]
    assert [r["seq"] for r in results] == [e["seq"] for e in decided if e["decision"] == "allow"]
    assert results[0]["fingerprint"] == decided[0]["action"]["fingerprint"]
    assert all(r["duration_ms"] >= 0 for r in results)
    kinds = [e["kind"] for e in await broker.events()]
    assert kinds[0] == "session.start" and kinds[-1] == "session.end"


async def test_asyncpg_extended_protocol(broker: Broker) -> None:
    import asyncpg

    from .wire import client_tls

    agent = await broker.agent()
    conn = await asyncpg.connect(
        host="127.0.0.1", port=broker.port, user="bot", database="app",
        password=broker.password(agent), ssl=client_tls(),
    )  # fmt: skip
    try:
        assert await conn.fetchval("SELECT name FROM items WHERE id = $1", 5) == "item 5"
        statement = await conn.prepare("SELECT id FROM items WHERE id < $1 ORDER BY id")
        assert [r["id"] for r in await statement.fetch(4)] == [1, 2, 3]
        async with conn.transaction():
            await conn.execute("INSERT INTO items VALUES ($1, $2)", 300, "async")
            await conn.execute("DELETE FROM items WHERE id = $1", 300)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no-secrets"):
            await conn.fetch("SELECT * FROM secrets WHERE id = $1", 1)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="approval"):
            await conn.execute("TRUNCATE items")
        assert await conn.fetchval("SELECT count(*) FROM items") == 10
    finally:
        await conn.close()


async def test_psql(broker: Broker, pg_env: dict[str, str]) -> None:
    import subprocess

    agent = await broker.agent()
    env = {**pg_env, "PGPASSWORD": broker.password(agent), "PGSSLMODE": "require"}
    args = ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(broker.port), "-U", "bot",
            "-d", "app", "-v", "ON_ERROR_STOP=1", "-c", "SELECT name FROM items WHERE id = 2",
            "-c", "SELECT * FROM secrets"]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, args, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "item 2"
    assert "statement refused by policy: denied-by-rule (rule no-secrets)" in done.stderr
    assert done.returncode == 1


async def test_psql_verifies_generated_certificate(broker: Broker, pg_env: dict[str, str]) -> None:
    import subprocess

    agent = await broker.agent()
    env = {**pg_env, "PGPASSWORD": broker.password(agent), "PGSSLMODE": "verify-full",
           "PGSSLROOTCERT": str(broker.data_dir / "pg-broker.crt")}  # fmt: skip
    args = ["psql", "-X", "-A", "-t", "-h", "localhost", "-p", str(broker.port), "-U", "bot",
            "-d", "app", "-c", "SELECT 40 + 2"]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, args, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "42", done.stderr


async def test_pgbench_select_only(broker: Broker, pg_env: dict[str, str]) -> None:
    import subprocess

    init = ["pgbench", "-i", "-s", "1", "-q", "-h", str(broker.pg.socket_dir), "-p",
            str(broker.pg.port), "-U", "tether", "broker_app"]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, init, env=pg_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    broker.pg.psql("GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA public TO app_user",
                   database="broker_app")  # fmt: skip
    agent = await broker.agent()
    # pgbench opens several connections with one password: a certificate-bound token.
    token, cert, key = await broker.bound_login(agent, broker.data_dir)
    env = {**pg_env, "PGPASSWORD": token, "PGSSLMODE": "require", "PGSSLCERT": str(cert),
           "PGSSLKEY": str(key)}  # fmt: skip
    for mode in ("simple", "extended", "prepared"):
        run = ["pgbench", "-S", "-n", "-M", mode, "-c", "2", "-t", "50", "-h", "127.0.0.1",
               "-p", str(broker.port), "-U", "bot", "app"]  # fmt: skip
        done = await asyncio.to_thread(
            subprocess.run, run, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert "number of transactions actually processed: 100/100" in done.stdout
