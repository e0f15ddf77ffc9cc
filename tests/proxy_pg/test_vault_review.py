"""Dynamic roles and vaulted PostgreSQL credentials, attacked: the reaper of one target
facing another target's leftover roles, and a secret that cannot be decrypted."""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select, update

from tests.listener import counting_listener
from tests.pg import PostgresServer
from tether.proxy.pg import codec as c
from tether.vault import pg_roles
from tether.vault.schema import targets, vault_secrets
from tether.vault.targets import seal_columns

from .conftest import ADMIN_PASSWORD, DATABASE, Broker
from .wire import Wire, errors

OTHER_PARENT = "review_writer"


def _admin(pg: PostgresServer) -> pg_roles.AdminLogin:
    return pg_roles.AdminLogin("127.0.0.1", pg.port, DATABASE, "app_admin", ADMIN_PASSWORD)


def _owner(pg: PostgresServer, table: str) -> str:
    return pg.psql(f"SELECT tableowner FROM pg_tables WHERE tablename = '{table}'", DATABASE)


async def test_a_reaper_leaves_the_roles_of_another_parent_alone(app_db: PostgresServer) -> None:
    # Two targets on one cluster, the default prefix, different parents: a leftover role of
    # the "writer" target owns a table. The "reader" target's reaper used to reassign that
    # table to app_reader (ownership: every privilege on it) before dropping the role.
    app_db.psql(
        f"DO $$ BEGIN CREATE ROLE {OTHER_PARENT} NOLOGIN; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$; "
        f"GRANT {OTHER_PARENT} TO app_admin WITH ADMIN OPTION"
    )
    admin, past = _admin(app_db), datetime.now(UTC) - timedelta(minutes=5)
    prefix = "rv" + secrets.token_hex(3) + "_"
    theirs = await pg_roles.create_role(
        admin, prefix=prefix, parent_role=OTHER_PARENT, valid_until=past
    )
    ours = await pg_roles.create_role(
        admin, prefix=prefix, parent_role="app_reader", valid_until=past
    )
    table = f"left_by_{theirs.role}"
    app_db.psql(f'CREATE TABLE {table} (id int); ALTER TABLE {table} OWNER TO "{theirs.role}"',
                DATABASE)  # fmt: skip
    try:
        dropped = await pg_roles.reap(admin, prefix=prefix, parent_role="app_reader")
        assert dropped == [ours.role]
        assert _owner(app_db, table) == theirs.role  # not handed to app_reader
        # Its own target's reaper does what the other's must not.
        assert await pg_roles.reap(admin, prefix=prefix, parent_role=OTHER_PARENT) == [theirs.role]
        assert _owner(app_db, table) == OTHER_PARENT
    finally:
        app_db.psql(f"DROP TABLE IF EXISTS {table}", DATABASE)
        for lease in (theirs, ours):
            await pg_roles.drop_role(admin, lease.role, parent_role="app_reader")


async def _swap_ciphertext(broker: Broker, name: str, donor: str) -> None:
    async with broker.store.engine.begin() as conn:
        column = vault_secrets.c.ciphertext
        moved = (await conn.execute(select(column).where(vault_secrets.c.name == donor))).scalar()
        await conn.execute(
            update(vault_secrets).where(vault_secrets.c.name == name).values(ciphertext=moved)
        )


async def _broken_dynamic_target(broker: Broker) -> None:
    """``aaa-broken`` (listed before ``dyn``), whose admin secret no longer decrypts."""
    await broker.secrets.put("broken-admin", b"whatever")
    await broker.secrets.put("donor", b"another value")
    base = {"host": "127.0.0.1", "port": broker.pg.port, "database": DATABASE,
            "tls_mode": "disable"}  # fmt: skip
    await broker.targets.add("aaa-broken", "postgres", {**base, "credential": {
        "type": "dynamic", "admin_username": "app_admin", "admin_secret": "broken-admin",
        "parent_role": "app_reader"}})  # fmt: skip
    await _swap_ciphertext(broker, "broken-admin", "donor")


async def test_one_undecryptable_admin_secret_does_not_stop_reaping_the_others(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    await _broken_dynamic_target(broker)
    admin = _admin(broker.pg)
    leftover = await pg_roles.create_role(
        admin, prefix="tether_", parent_role="app_reader",
        valid_until=datetime.now(UTC) - timedelta(minutes=5),
    )  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="tether.proxy.pg.credentials"):
            await broker.broker.reap_once()  # raised SecretError, reaping nothing
        # Gone (the broker's own reaper, started with it, may have got there first).
        exists = f"SELECT count(*) FROM pg_roles WHERE rolname = '{leftover.role}'"
        assert broker.pg.psql(exists) == "0"
        assert "aaa-broken" in caplog.text and "cannot be decrypted" in caplog.text
    finally:
        await pg_roles.drop_role(admin, leftover.role, parent_role="app_reader")


async def test_a_session_on_a_target_whose_secret_does_not_decrypt_is_refused_cleanly(
    broker: Broker,
) -> None:
    await _broken_dynamic_target(broker)
    agent = await broker.agent()
    wire = await Wire.open(broker.port)
    frames = await wire.login(broker.password(agent, "aaa-broken"), "aaa-broken")
    (error,) = errors(frames)
    # Was XX000 "internal error in the broker", with a traceback in the log.
    assert error.sqlstate == "08006" and "credential is not available" in (error.get("M") or "")
    wire.close()


async def test_a_target_row_that_no_longer_validates_refuses_the_login_cleanly(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    # Invalid, yet sealed by Tether (a row changed without the master key is refused by its
    # seal before it is validated: the test below).
    async with broker.store.engine.begin() as conn:
        query = select(targets).where(targets.c.name == "app")
        columns = {**(await conn.execute(query)).mappings().one(), "spec": {"host": "127.0.0.1"}}
        seal = broker.identity.sealer.seal("targets", seal_columns(columns))
        await conn.execute(
            update(targets).where(targets.c.name == "app").values(spec=columns["spec"], seal=seal)
        )
    agent = await broker.agent()
    wire = await Wire.open(broker.port)
    with caplog.at_level(logging.ERROR, logger="tether.proxy.pg.server"):
        frames = await wire.login(broker.password(agent, "app"), "app")
    (error,) = errors(frames)
    # Was XX000 "internal error in the broker", with a traceback in the log.
    assert error.sqlstate == "08006" and "is invalid" in (error.get("M") or "")
    assert "stored target 'app' is invalid" in caplog.text
    assert "Traceback" not in caplog.text
    wire.close()


async def test_a_role_whose_backend_is_still_running_a_statement_is_dropped(
    app_db: PostgresServer,
) -> None:
    # The session ended (revoked, expired, killed) while its statement ran upstream. Ending
    # that backend needs the admin to hold the role's privileges: it failed with "permission
    # denied", out of release() as a traceback, and left the role and its statement running.
    admin = _admin(app_db)
    lease = await pg_roles.create_role(
        admin, prefix="rv_busy_", parent_role="app_reader",
        valid_until=datetime.now(UTC) + timedelta(minutes=5),
    )  # fmt: skip
    session = await asyncpg.connect(
        host="127.0.0.1", port=app_db.port, user=lease.role, password=lease.password,
        database=DATABASE, ssl=False,
    )  # fmt: skip
    running = asyncio.ensure_future(session.execute("SELECT pg_sleep(60)"))
    try:
        await asyncio.sleep(0.3)
        assert await pg_roles.drop_role(admin, lease.role, parent_role="app_reader")
        exists = f"SELECT count(*) FROM pg_roles WHERE rolname = '{lease.role}'"
        assert app_db.psql(exists) == "0"
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await asyncio.wait_for(running, 10)  # its statement was ended, not left running
    finally:
        session.terminate()
        app_db.psql(f'DROP ROLE IF EXISTS "{lease.role}"')


async def test_a_revoked_session_does_not_leave_its_statement_running_upstream(
    broker: Broker,
) -> None:
    # The broker ended the session and closed the upstream socket, but PostgreSQL only
    # notices a closed client when it next writes: the revoked agent's statement ran on.
    agent = await broker.agent()
    wire = await Wire.open(broker.port)
    frames = await wire.login(broker.password(agent))
    assert not errors(frames)
    marker = f"revoked_{secrets.token_hex(4)}"
    wire.send(c.Query(f"SELECT pg_sleep(60) AS {marker}").encode())
    running = f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%AS {marker}'"
    for _ in range(50):
        if broker.pg.psql(running) == "1":
            break
        await asyncio.sleep(0.1)
    assert broker.pg.psql(running) == "1"
    await broker.identity.revoke("agent", "bot", reason="test", by="admin")
    await wire.until({0x45}, timeout=5)
    wire.close()
    for _ in range(50):
        if broker.pg.psql(running) == "0":
            break
        await asyncio.sleep(0.1)
    assert broker.pg.psql(running) == "0"


async def test_a_target_redirected_in_the_database_refuses_the_login(broker: Broker) -> None:
    async with counting_listener() as attacker:
        async with broker.store.engine.begin() as conn:  # a valid spec, the seal kept
            query = select(targets.c.spec, targets.c.labels).where(targets.c.name == "app")
            genuine, labels = (await conn.execute(query)).one()
            port = attacker.port
            await conn.execute(
                update(targets)
                .where(targets.c.name == "app")
                .values(spec={**genuine, "port": port})
            )
        agent = await broker.agent()
        wire = await Wire.open(broker.port)
        (error,) = errors(await wire.login(broker.password(agent, "app"), "app"))
        wire.close()
        assert error.sqlstate == "08006" and "is invalid" in (error.get("M") or "")
        reasons = [e["reason"] for e in await broker.events("token.refused")]
        assert "the definition of target 'app' is invalid" in reasons, reasons
        assert attacker.connections == 0

        await broker.targets.replace("app", "postgres", genuine, labels)  # through Tether
        wire = await Wire.open(broker.port)
        assert errors(await wire.login(broker.password(agent, "app"), "app")) == []
        wire.close()
        assert attacker.connections == 0
