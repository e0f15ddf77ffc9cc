"""Logging in to the broker: TLS, the token as password, its proof, the target by database."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tether.identity.dpop import make_proof
from tether.proxy.pg import codec as c
from tether.proxy.pg.auth import DPOP_METHOD, dpop_htu

from .conftest import Broker
from .wire import Wire, errors, rows, status


async def _login_error(broker: Broker, password: str, database: str = "app") -> str | None:
    wire = await Wire.open(broker.port)
    frames = await wire.login(password, database)
    wire.close()
    found = errors(frames)
    return found[0].sqlstate if found else None


async def test_dpop_login_and_refusals(broker: Broker) -> None:
    agent = await broker.agent()
    good = broker.password(agent)
    assert await _login_error(broker, good) is None
    # The same proof again: replayed.
    assert await _login_error(broker, good) == "28P01"
    # The bare token (a stolen bearer) is useless.
    assert await _login_error(broker, agent.token) == "28P01"
    # A proof for another database, another broker address, or by another key.
    other_db = broker.password(agent, "dyn")
    assert await _login_error(broker, other_db, "app") == "28P01"
    htu = dpop_htu("evil.example:6432", "app")
    proof = make_proof(agent.key, DPOP_METHOD, htu, now=time.time(), access_token=agent.token)
    assert await _login_error(broker, f"{agent.token} {proof}") == "28P01"
    thief = await broker.agent("thief")
    stolen = broker.password(thief).split(" ")[1]
    assert await _login_error(broker, f"{agent.token} {stolen}") == "28P01"
    # Garbage and extra fields.
    assert await _login_error(broker, f"{good} x") == "28P01"
    assert await _login_error(broker, "") == "28P01"
    events = await broker.events("session.start")
    assert len(events) == 1 and events[0]["agent"] == "bot"
    refused = await broker.events("token.refused")
    assert len(refused) == 7 and all(e["target"] in ("app", "dyn") for e in refused)
    assert all(e["source_ip"] == "127.0.0.1" for e in refused)
    assert agent.token not in str(refused)


async def test_tls_required_and_unknown_database(broker: Broker) -> None:
    agent = await broker.agent()
    wire = await Wire.open(broker.port, use_tls=False)
    frames = await wire.login(broker.password(agent))
    assert [e.sqlstate for e in errors(frames)] == ["28000"]
    wire.close()
    assert await _login_error(broker, broker.password(agent, "nope"), "nope") == "3D000"
    # Bytes smuggled after SSLRequest, before the handshake: a protocol violation.
    wire = await Wire.open(broker.port, use_tls=False)
    wire.send(c.SSLRequest().encode() + c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    await wire.until({0x45}, timeout=5)
    assert await wire.closed()
    # A replication connection is refused.
    wire = await Wire.open(broker.port)
    params = (("user", "bot"), ("database", "app"), ("replication", "database"))
    wire.send(c.StartupMessage(c.PROTOCOL_3_0, params).encode())
    assert [e.sqlstate for e in errors(await wire.until({0x45}))] == ["28000"]
    wire.close()


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


async def test_certificate_bound_token(broker: Broker, tmp_path: Path) -> None:
    agent = await broker.agent()
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = await broker.identity.x509_certificate(agent.claims, _csr(key))
    bound = await broker.identity.certificate_bound_token(agent.claims, cert_pem)
    (tmp_path / "c.pem").write_text(cert_pem)
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    wire = await Wire.open(broker.port, tls=context)
    frames = await wire.login(bound.token)
    assert status(frames) == "I", errors(frames)
    assert rows(await wire.query("SELECT count(*) > 0 FROM items")) == [["t"]]
    wire.close()
    # Without the certificate, the bound token is refused.
    assert await _login_error(broker, bound.token) == "28P01"


async def test_unknown_database_and_store_failures_are_audited(broker: Broker) -> None:
    """After the agent authenticated: an unknown database is refused (3D000) and audited
    with the agent's subject; a store failure while the token or the target is checked is
    refused (XX000) and audited (was: unaudited), and nothing reaches PostgreSQL."""
    agent = await broker.agent()
    assert await _login_error(broker, broker.password(agent, "nope"), "nope") == "3D000"

    async def rename(table: str, to: str) -> None:
        async with broker.store.engine.begin() as conn:
            await conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {to}")

    await rename("targets", "targets_away")
    await asyncio.sleep(1.2)  # the target's cached row expires
    assert await _login_error(broker, broker.password(agent)) == "XX000"
    await rename("targets_away", "targets")
    await rename("agents", "agents_away")
    broker.identity.agent_states.forget(agent.id)
    assert await _login_error(broker, broker.password(agent)) == "XX000"
    await rename("agents_away", "agents")
    broker.identity.agent_states.forget(agent.id)
    assert await _login_error(broker, broker.password(agent)) is None  # the store is back

    refused = await broker.events("token.refused")
    assert [(e["agent"], e["reason"]) for e in refused] == [
        ("bot", "no PostgreSQL target named 'nope'"),
        ("bot", "the target could not be read: internal error (OperationalError)"),
        (None, "the login could not be checked: internal error (OperationalError)"),
    ]
    assert len(await broker.events("session.start")) == 1
