"""The HEC and webhook sinks against an independent HTTP receiver process (TLS, test CA)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.audit_export.certs import Certs
from tests.audit_export.conftest import Trail, seqs_check, wait_for
from tests.audit_export.receivers.harness import ReceiverProcess
from tether.audit.sinks.base import DeliveryLoop, SinkError, sink_status
from tether.audit.sinks.config import (
    Backoff,
    HecSinkConfig,
    SinkConfigError,
    WebhookSinkConfig,
)
from tether.audit.sinks.hec import HecSink
from tether.audit.sinks.webhook import WebhookSink

MODULE = "tests.audit_export.receivers.http_receiver"
TOKEN = "hec-token-0123456789"
SECRET = "whsec-abcdef"
FAST = Backoff(initial=0.05, max=0.5, jitter=0.5)


def _receiver(tmp_path: Path, certs: Certs, mode: str, secret: str, *extra: str) -> ReceiverProcess:
    args = ["--mode", mode, "--secret", secret, "--cert", str(certs.server_cert),
            "--key", str(certs.server_key), *extra]  # fmt: skip
    return ReceiverProcess(MODULE, tmp_path / f"{mode}.jsonl", args)


@pytest.fixture
def hec(tmp_path: Path, certs: Certs) -> Iterator[ReceiverProcess]:
    process = _receiver(tmp_path, certs, "hec", TOKEN)
    process.start()
    yield process
    process.kill()


@pytest.fixture
def webhook(tmp_path: Path, certs: Certs) -> Iterator[ReceiverProcess]:
    process = _receiver(tmp_path, certs, "webhook", SECRET)
    process.start()
    yield process
    process.kill()


def _hec_config(port: int, certs: Certs, **options: Any) -> HecSinkConfig:
    fields = {"name": "splunk", "kind": "hec", "token": TOKEN, "ca_file": certs.ca,
              "url": f"https://localhost:{port}/services/collector/event", **options}  # fmt: skip
    return HecSinkConfig.model_validate(fields)


def _webhook_config(port: int, certs: Certs, **options: Any) -> WebhookSinkConfig:
    fields = {"name": "hook", "kind": "webhook", "secret": SECRET, "ca_file": certs.ca,
              "url": f"https://localhost:{port}/audit", **options}  # fmt: skip
    return WebhookSinkConfig.model_validate(fields)


def _accepted(receiver: ReceiverProcess) -> list[dict[str, Any]]:
    return [r for r in receiver.records() if "event" in r]


def _seqs(receiver: ReceiverProcess) -> list[int]:
    return [int(r["event"]["metadata"]["sequence"]) for r in _accepted(receiver)]


async def _run(loop: DeliveryLoop, until: Any, timeout: float = 60) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait_for(until, timeout, "the receiver to get every event")
    finally:
        stop.set()
        await task


async def test_hec_delivers_batches_with_the_token(
    trail: Trail, hec: ReceiverProcess, certs: Certs
) -> None:
    stored = await trail.emit(23)
    config = _hec_config(hec.port, certs, index="audit", host="node-1")
    loop = DeliveryLoop(HecSink(config), trail.engine, batch_size=10)
    await _run(loop, lambda: len(_accepted(hec)) >= 23)
    assert _seqs(hec) == list(range(1, 24))
    first = _accepted(hec)[0]
    assert first["event"]["metadata"]["uid"] == stored[0].id
    assert first["hec"] == {
        "time": round(stored[0].time.timestamp(), 3),
        "source": "tether",
        "sourcetype": "ocsf",
        "index": "audit",
        "host": "node-1",
    }


async def test_hec_refuses_a_wrong_token_and_the_cursor_stays(
    trail: Trail, hec: ReceiverProcess, certs: Certs
) -> None:
    await trail.emit(5)
    config = _hec_config(hec.port, certs, token="wrong")
    loop = DeliveryLoop(HecSink(config), trail.engine, backoff=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await wait_for(lambda: loop.failures >= 2, what="refusals")
    stop.set()
    await task
    [status] = await sink_status(trail.engine)
    assert status.last_seq == 0 and status.lag == 5
    assert status.last_error == "HEC " + config.url + ": status 401: Invalid token"
    assert "wrong" not in status.last_error  # the token never shows
    assert _accepted(hec) == [] and {"refused": 401} in hec.records()


async def test_hec_with_indexer_acknowledgement(trail: Trail, tmp_path: Path, certs: Certs) -> None:
    receiver = _receiver(tmp_path, certs, "hec", TOKEN, "--ack")
    receiver.start()
    try:
        events = await trail.emit(4)
        sink = HecSink(_hec_config(receiver.port, certs, use_ack=True))
        await sink.deliver(events)  # returns only once the ack is reported (2nd poll)
        await sink.close()
        assert [int(r["event"]["metadata"]["sequence"]) for r in _accepted(receiver)] == [
            1, 2, 3, 4,
        ]  # fmt: skip
        no_ack = HecSink(_hec_config(receiver.port, certs))  # no channel: refused
        with pytest.raises(SinkError, match="status 400"):
            await no_ack.deliver(events)
        await no_ack.close()
    finally:
        receiver.kill()


async def test_hec_token_from_the_environment(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _hec_config(1, certs, token=None, token_env="SPLUNK_HEC_TOKEN")
    with pytest.raises(SinkConfigError, match="SPLUNK_HEC_TOKEN is not set"):
        HecSink(config)
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", TOKEN)
    await HecSink(config).close()
    with pytest.raises(ValueError, match="TETHER_"):
        _hec_config(1, certs, token=None, token_env="TETHER_HEC")


@pytest.mark.parametrize("kind", ["hec", "webhook"])
async def test_a_receiver_down_for_3000_events_gets_every_one(
    trail: Trail, tmp_path: Path, certs: Certs, kind: str
) -> None:
    secret = TOKEN if kind == "hec" else SECRET
    receiver = _receiver(tmp_path, certs, kind, secret)
    receiver.start()
    batch = 250
    sink = (
        HecSink(_hec_config(receiver.port, certs))
        if kind == "hec"
        else WebhookSink(_webhook_config(receiver.port, certs))
    )
    loop = DeliveryLoop(sink, trail.engine, batch_size=batch, backoff=FAST, poll_interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await trail.emit(50)
        await wait_for(lambda: len(_accepted(receiver)) >= 50, what="the first 50")
        receiver.kill()
        await trail.emit(3000)
        await wait_for(lambda: loop.failures >= 3, what="failed deliveries")
        assert (await sink_status(trail.engine))[0].lag == 3000
        receiver.start("--fail", "2")  # back, but busy for its first two requests
        await wait_for(lambda: len(set(_seqs(receiver))) >= 3050, 120, "all 3050")
    finally:
        stop.set()
        await task
        receiver.kill()
    duplicates = seqs_check(_seqs(receiver), 3050, batch)
    print(f"{kind} outage: {duplicates} duplicates")
    assert [r for r in receiver.records() if "refused" in r] == [{"refused": 503}] * 2
    assert (await sink_status(trail.engine))[0].lag == 0


async def test_webhook_batches_are_signed_and_identified(
    trail: Trail, webhook: ReceiverProcess, certs: Certs
) -> None:
    await trail.emit(9)
    loop = DeliveryLoop(WebhookSink(_webhook_config(webhook.port, certs)), trail.engine,
                        batch_size=4)  # fmt: skip
    await _run(loop, lambda: len(_accepted(webhook)) >= 9)
    assert _seqs(webhook) == list(range(1, 10))
    deliveries = [r["delivery"] for r in _accepted(webhook)]
    assert len(set(deliveries)) == 3  # batches of 4, 4 and 1, each with its own id
    assert deliveries[0] == deliveries[3] != deliveries[4]


async def test_webhook_with_a_wrong_secret_is_refused(
    trail: Trail, webhook: ReceiverProcess, certs: Certs
) -> None:
    events = await trail.emit(2)
    sink = WebhookSink(_webhook_config(webhook.port, certs, secret="not-the-secret"))
    with pytest.raises(SinkError, match="status 401"):
        await sink.deliver(events)
    await sink.close()
    old = WebhookSink(_webhook_config(webhook.port, certs), clock=lambda: 1_000_000_000.0)
    with pytest.raises(SinkError, match="status 401"):
        await old.deliver(events)  # a signature from 2001 is a replay
    await old.close()
    assert _accepted(webhook) == []


async def test_http_sinks_verify_the_server_certificate(
    trail: Trail, webhook: ReceiverProcess, certs: Certs
) -> None:
    events = await trail.emit(1)
    rogue = WebhookSink(_webhook_config(webhook.port, certs, ca_file=certs.rogue_ca))
    with pytest.raises(SinkError, match="ConnectError"):
        await rogue.deliver(events)
    await rogue.close()
    by_ip = WebhookSink(
        _webhook_config(webhook.port, certs, url=f"https://127.0.0.1:{webhook.port}/a")
    )
    await by_ip.deliver(events)  # the certificate names 127.0.0.1 too
    await by_ip.close()
    assert _seqs(webhook) == [1]


@pytest.mark.parametrize("kind", ["hec", "webhook"])
async def test_a_batch_processed_but_not_acknowledged_is_sent_again(
    trail: Trail, tmp_path: Path, certs: Certs, kind: str
) -> None:
    secret = TOKEN if kind == "hec" else SECRET
    receiver = _receiver(tmp_path, certs, kind, secret, "--no-answer", "3")
    receiver.start()
    batch = 100
    sink = (
        HecSink(_hec_config(receiver.port, certs))
        if kind == "hec"
        else WebhookSink(_webhook_config(receiver.port, certs))
    )
    loop = DeliveryLoop(sink, trail.engine, batch_size=batch, backoff=FAST, poll_interval=0.05)
    await trail.emit(450)
    try:
        await _run(loop, lambda: len(set(_seqs(receiver))) >= 450)
    finally:
        receiver.kill()
    received = _seqs(receiver)
    # The third batch (201-300) was processed, its answer lost, so it came again: exactly
    # one batch of duplicates, in order, and nothing else repeated.
    assert seqs_check(received, 450, batch) == batch
    assert received[200:400] == list(range(201, 301)) * 2
    if kind == "webhook":
        deliveries = [r["delivery"] for r in _accepted(receiver)]
        assert deliveries[200] == deliveries[300]  # the same batch, the same delivery id
