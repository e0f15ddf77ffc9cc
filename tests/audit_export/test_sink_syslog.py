"""The syslog sink against an independent receiver process: TCP, TLS, an outage, restarts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.audit_export.certs import Certs
from tests.audit_export.conftest import Trail, seqs_check, wait_for
from tests.audit_export.receivers.harness import ReceiverProcess
from tether.audit.events import AuditEvent
from tether.audit.sinks.base import DeliveryLoop, SinkError, sink_status
from tether.audit.sinks.config import Backoff, SyslogSinkConfig
from tether.audit.sinks.cursors import get_cursor
from tether.audit.sinks.syslog import SyslogSink

MODULE = "tests.audit_export.receivers.syslog_receiver"
FAST = Backoff(initial=0.05, max=0.5, jitter=0.5)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverProcess]:
    process = ReceiverProcess(MODULE, tmp_path / "syslog.jsonl", [])
    process.start()
    yield process
    process.kill()


@pytest.fixture
def tls_receiver(tmp_path: Path, certs: Certs) -> Iterator[ReceiverProcess]:
    args = ["--cert", str(certs.server_cert), "--key", str(certs.server_key)]
    process = ReceiverProcess(MODULE, tmp_path / "syslog-tls.jsonl", args)
    process.start()
    yield process
    process.kill()


def _config(port: int, **options: Any) -> SyslogSinkConfig:
    fields = {"name": "siem", "kind": "syslog", "host": "127.0.0.1", "port": port,
              "transport": "tcp", "hostname": "node-1", **options}  # fmt: skip
    return SyslogSinkConfig.model_validate(fields)


def _seqs(records: list[dict[str, Any]]) -> list[int]:
    assert not [r for r in records if "error" in r], records
    return [int(r["sd"]["tether@32473"]["seq"]) for r in records]


async def _run(loop: DeliveryLoop, until: Any, timeout: float = 60) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait_for(until, timeout, "the receiver to get every event")
    finally:
        stop.set()
        await task


async def test_events_arrive_as_rfc5424_over_tcp(trail: Trail, receiver: ReceiverProcess) -> None:
    stored = await trail.emit(25)
    loop = DeliveryLoop(SyslogSink(_config(receiver.port)), trail.engine, batch_size=10)
    await _run(loop, lambda: len(receiver.records()) >= 25)

    records = receiver.records()
    assert _seqs(records) == list(range(1, 26))
    first, event = records[0], stored[0]
    assert (first["app"], first["hostname"], first["msgid"]) == ("tether", "node-1", event.kind)
    assert first["facility"] == 13 and first["severity"] == 6  # log audit, informational
    assert first["timestamp"].endswith("Z")
    sd = first["sd"]["tether@32473"]
    assert sd == {"seq": "1", "id": event.id, "agent": "deploy-bot", "decision": "allow",
                  "session": "s-0", "target": "web-1"}  # fmt: skip
    ocsf = json.loads(first["msg"])
    assert ocsf["metadata"]["uid"] == event.id and ocsf["class_uid"] == 4007
    denied = next(r for r in records if r["msgid"] == "decision")
    assert denied["severity"] == 4  # deny: OCSF Medium, syslog warning
    async with trail.engine.connect() as conn:
        cursor = await get_cursor(conn, "siem")
    assert cursor is not None and cursor.last_seq == 25


async def test_a_receiver_down_for_3000_events_gets_every_one(
    trail: Trail, receiver: ReceiverProcess
) -> None:
    batch = 200
    loop = DeliveryLoop(
        SyslogSink(_config(receiver.port)), trail.engine, batch_size=batch, backoff=FAST,
        poll_interval=0.05,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await trail.emit(100)
        await wait_for(lambda: len(receiver.records()) >= 100, what="the first 100")
        receiver.kill()
        await trail.emit(3000)
        await wait_for(lambda: loop.failures >= 3, what="failed deliveries")
        [status] = await sink_status(trail.engine)
        assert status.lag == 3000 and status.last_seq == 100
        assert status.last_error is not None and "cannot connect" in status.last_error
        receiver.start()
        await wait_for(lambda: len(set(_seqs(receiver.records()))) >= 3100, 120, "all 3100")
    finally:
        stop.set()
        await task
    duplicates = seqs_check(_seqs(receiver.records()), 3100, batch)
    print(f"syslog outage: {duplicates} duplicates")
    [status] = await sink_status(trail.engine)
    assert (status.lag, status.last_error) == (0, None)


async def test_delivery_resumes_from_the_cursor_after_a_restart(
    trail: Trail, receiver: ReceiverProcess
) -> None:
    await trail.emit(30)
    first = DeliveryLoop(SyslogSink(_config(receiver.port)), trail.engine, batch_size=7)
    await _run(first, lambda: len(receiver.records()) >= 30)
    await trail.emit(20)
    second = DeliveryLoop(SyslogSink(_config(receiver.port)), trail.engine, batch_size=7)
    await _run(second, lambda: len(receiver.records()) >= 50)
    assert _seqs(receiver.records()) == list(range(1, 51))  # nothing sent twice


async def test_tls_with_a_test_ca(
    trail: Trail, tls_receiver: ReceiverProcess, certs: Certs
) -> None:
    await trail.emit(12)
    config = _config(tls_receiver.port, transport="tls", ca_file=certs.ca, server_name="localhost")
    loop = DeliveryLoop(SyslogSink(config), trail.engine, batch_size=5)
    await _run(loop, lambda: len(tls_receiver.records()) >= 12)
    assert _seqs(tls_receiver.records()) == list(range(1, 13))


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"server_name": "not-the-server"}, "cannot connect"),  # the name is checked
        ({"server_name": "localhost", "ca_file": "ROGUE"}, "certificate verify failed"),
        ({"server_name": "localhost", "ca_file": None}, "certificate verify failed"),
    ],
)
async def test_tls_refuses_a_server_it_cannot_verify(
    trail: Trail, tls_receiver: ReceiverProcess, certs: Certs, options: dict[str, Any], error: str
) -> None:
    [event] = await trail.emit(1)
    ca = {"ROGUE": certs.rogue_ca, None: None}.get(options.get("ca_file"), certs.ca)
    config = _config(tls_receiver.port, transport="tls", **{**options, "ca_file": ca})
    sink = SyslogSink(config)
    with pytest.raises(SinkError, match=error):
        await sink.deliver([event])
    await sink.close()
    assert tls_receiver.records() == []


async def test_tls_client_certificate(trail: Trail, tmp_path: Path, certs: Certs) -> None:
    args = ["--cert", str(certs.server_cert), "--key", str(certs.server_key),
            "--client-ca", str(certs.ca)]  # fmt: skip
    receiver = ReceiverProcess(MODULE, tmp_path / "mtls.jsonl", args)
    receiver.start()
    try:
        [event] = await trail.emit(1)
        tls = {"transport": "tls", "ca_file": certs.ca, "server_name": "localhost"}
        anonymous = SyslogSink(_config(receiver.port, **tls))
        # TLS 1.3: the refusal comes after the client's handshake; the sink waits for it
        # rather than writing the batch into a connection the receiver drops.
        with pytest.raises(SinkError, match="refused"):
            await anonymous.deliver([event])
        await anonymous.close()
        client = {"cert_file": certs.client_cert, "key_file": certs.client_key}
        known = SyslogSink(_config(receiver.port, **tls, **client))
        await known.deliver([event])
        await known.close()
        await wait_for(lambda: len(receiver.records()) >= 1)
        assert _seqs(receiver.records()) == [1]
    finally:
        receiver.kill()


async def test_building_a_batch_of_large_events_does_not_stall_the_event_loop(
    receiver: ReceiverProcess,
) -> None:
    """The node's event loop decides and audits agents' actions; the sinks share it. A
    batch of large events (an agent's 300 kB commands: each mapped, dumped, shrunk to fit)
    was built on the loop, which then answered nothing for the whole time. It is built in
    a thread now: the loop keeps ticking while the batch is made and sent."""
    sink = SyslogSink(_config(receiver.port))
    action = {"command": "echo " + "x" * 300_000}
    events = [
        AuditEvent(kind="ssh.command", agent="bot", action=action).chained(i, "0" * 64, "1" * 64)
        for i in range(1, 161)
    ]
    gaps: list[float] = []
    running = True

    async def tick() -> None:
        last = time.monotonic()
        while running:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await sink.deliver(events)
    took = time.monotonic() - started
    running = False
    await ticker
    await sink.close()
    await wait_for(lambda: len(receiver.records()) >= 160, 30, "the 160 messages")
    assert took > 0.3, "the batch is too cheap here to show anything"
    assert max(gaps) < min(0.25, took / 2), (max(gaps), took)
