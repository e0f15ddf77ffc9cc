"""Session life: dynamic roles, revocation, cancel requests, malformed input."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.proxy.pg import codec as c
from tether.proxy.pg.backend import T_READY
from tether.vault import pg_roles

from .conftest import ADMIN_PASSWORD, DATABASE, Broker
from .wire import Wire, errors, rows, status


def _roles(broker: Broker) -> list[str]:
    out = broker.pg.psql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tether%' ORDER BY 1")
    return [line for line in out.splitlines() if line]


async def test_dynamic_role_per_session(broker: Broker) -> None:
    before = _roles(broker)
    agent = await broker.agent()
    wire = await Wire.open(broker.port)
    frames = await wire.login(broker.password(agent, "dyn"), "dyn")
    assert status(frames) == "I", errors(frames)
    (user,) = rows(await wire.query("SELECT current_user"))[0]
    assert user is not None and user.startswith("tether_")
    assert user in _roles(broker)
    member = broker.pg.psql(f"SELECT pg_has_role('{user}', 'app_reader', 'MEMBER')")
    assert member == "t"
    until = broker.pg.psql(f"SELECT rolvaliduntil > now() FROM pg_roles WHERE rolname = '{user}'")
    assert until == "t"
    assert rows(await wire.query("SELECT count(*) > 0 FROM items")) == [["t"]]
    wire.send(c.Terminate().encode())
    await wire.closed()
    for _ in range(100):
        if user not in _roles(broker):
            break
        await asyncio.sleep(0.1)
    assert _roles(broker) == before


async def test_reaper_drops_expired_leftovers(broker: Broker) -> None:
    admin = pg_roles.AdminLogin("127.0.0.1", broker.pg.port, DATABASE, "app_admin", ADMIN_PASSWORD)
    past = datetime.now(UTC) - timedelta(minutes=5)
    lease = await pg_roles.create_role(
        admin, prefix="tether_", parent_role="app_reader", valid_until=past
    )
    live = await pg_roles.create_role(
        admin, prefix="tether_", parent_role="app_reader",
        valid_until=datetime.now(UTC) + timedelta(minutes=5),
    )  # fmt: skip
    broker.pg.psql("CREATE ROLE tether_not_ours LOGIN VALID UNTIL '2000-01-01'")
    try:
        # The broker's own reaper (started with it) may get there first: either way it is gone.
        dropped = await broker.broker.reap_once()
        assert live.role not in dropped
        assert lease.role not in _roles(broker)
        assert live.role in _roles(broker) and "tether_not_ours" in _roles(broker)
    finally:
        await pg_roles.drop_role(admin, live.role, parent_role="app_reader")
        broker.pg.psql("DROP ROLE tether_not_ours")


async def test_revocation_ends_live_session_within_a_second(broker: Broker) -> None:
    agent = await broker.agent()
    wire = await Wire.open(broker.port)
    assert status(await wire.login(broker.password(agent))) == "I"
    assert rows(await wire.query("SELECT 1")) == [["1"]]
    await broker.identity.revoke("agent", "bot", reason="test", by="admin")
    began = time.monotonic()
    frames = await wire.until({0x45}, timeout=5)
    assert time.monotonic() - began < 1.0
    assert [e.sqlstate for e in errors(frames)] == ["28000"]
    assert await wire.closed()
    (end,) = await broker.wait_for("session.end")
    assert end["reason"] == "revoked"


async def test_cancel_request_reaches_the_right_backend(broker: Broker) -> None:
    agent = await broker.agent()
    wire = await Wire.open(broker.port)
    frames = await wire.login(broker.password(agent))
    (key,) = [f for f in frames if f[0] == 0x4B]
    pid, secret = struct.unpack("!i", key[1][:4])[0], key[1][4:]
    wire.send(c.Query("SELECT pg_sleep(30)").encode())
    await asyncio.sleep(0.3)
    # A wrong key does nothing; the right one cancels.
    for candidate in (bytes(4), secret):
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(c.CancelRequest(pid, candidate).encode())
        await writer.drain()
        await reader.read()
        writer.close()
    began = time.monotonic()
    frames = await wire.until({T_READY}, timeout=10)
    assert time.monotonic() - began < 5
    assert [e.sqlstate for e in errors(frames)] == ["57014"]
    wire.close()


MALFORMED = [
    b"Q\x00\x00\x00\x03",
    b"Q\x00\x00\x00\x0aINSERT",  # truncated: no terminator, then the connection closes
    b"Q\x00\x00\x00\x0c\xffINSERT\x00\x00",
    b"P\x00\x00\x00\x08\x00\x00\x00",
    b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x01\xff\xff",
    b"Z\x00\x00\x00\x04",
    b"p\x00\x00\x00\x05\x00",
    b"Q" + struct.pack("!i", 1 << 30),
]


async def test_malformed_messages_end_the_session_and_pass_nothing(broker: Broker) -> None:
    agent = await broker.agent()
    insert = c.Query("INSERT INTO items VALUES (999, 'smuggled')").encode()
    for blob in MALFORMED:
        wire = await Wire.open(broker.port)
        assert status(await wire.login(broker.password(agent))) == "I"
        wire.send(blob + insert)
        await wire.writer.drain()
        wire.writer.write_eof() if wire.writer.can_write_eof() else None
        frames = await wire.until({0x45}, timeout=5)
        assert not rows(frames)
        wire.close()
    await asyncio.sleep(0.2)
    count = broker.pg.psql("SELECT count(*) FROM items WHERE id = 999", database=DATABASE)
    assert count == "0"


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=64))
async def test_fuzzed_input_never_breaks_the_broker(broker: Broker, blob: bytes) -> None:
    agent = await broker.agent()
    wire = await Wire.open(broker.port)
    assert status(await wire.login(broker.password(agent))) == "I"
    wire.send(blob + c.Query("SELECT 1").encode())
    with contextlib.suppress(TimeoutError):
        await wire.until({T_READY, 0x45}, timeout=5)
    wire.close()
    # The broker still serves.
    wire = await Wire.open(broker.port)
    assert status(await wire.login(broker.password(agent))) == "I"
    wire.close()


async def test_reap_returns_exactly_the_expired_roles_of_its_prefix(broker: Broker) -> None:
    admin = pg_roles.AdminLogin("127.0.0.1", broker.pg.port, DATABASE, "app_admin", ADMIN_PASSWORD)
    past = datetime.now(UTC) - timedelta(minutes=5)
    old = await pg_roles.create_role(
        admin, prefix="reap_", parent_role="app_reader", valid_until=past
    )
    other = await pg_roles.create_role(
        admin, prefix="keep_", parent_role="app_reader", valid_until=past
    )
    try:
        assert await pg_roles.reap(admin, prefix="reap_", parent_role="app_reader") == [old.role]
        assert await pg_roles.reap(admin, prefix="reap_", parent_role="app_reader") == []
    finally:
        await pg_roles.drop_role(admin, other.role, parent_role="app_reader")
