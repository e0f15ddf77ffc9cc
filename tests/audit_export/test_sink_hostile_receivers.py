"""HTTP receivers that misbehave: a 2xx that is not an acknowledgement, error text built to
drive the operator's terminal, and sink URLs that carry credentials.

Each receiver is a real HTTP server on loopback (``http.server`` in a thread); the store is
the real SQLite trail of the ``trail`` fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.audit_export.conftest import Trail
from tether.audit.sinks.base import DeliveryLoop, SinkError, sink_status
from tether.audit.sinks.config import Backoff, HecSinkConfig, WebhookSinkConfig
from tether.audit.sinks.cursors import get_cursor
from tether.audit.sinks.hec import HecSink
from tether.audit.sinks.webhook import WebhookSink
from tether.cli.main import app

FAST = Backoff(initial=0.05, max=0.2, jitter=0)


class Answer:
    """What the receiver answers to every POST, and what it was sent."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.requests: list[dict[str, Any]] = []


class Receiver:
    def __init__(self) -> None:
        self.answer = Answer()
        answer = self.answer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                answer.requests.append({"path": self.path, "headers": dict(self.headers)})
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _hec(url: str) -> HecSink:
    return HecSink(HecSinkConfig(name="splunk", kind="hec", url=url, token="hec-token-1"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"status": "ok"}', b'{"text": "Success"}', b'{"code": false}', b'{"code": 0.0}'],
)
async def test_a_hec_200_without_code_0_is_not_an_acknowledgement(
    trail: Trail, receiver: Receiver, body: bytes
) -> None:
    """HEC acknowledges with 200 and ``"code": 0``. A 200 whose JSON lacks it (a proxy, a
    load balancer's health page, a collector that is not HEC) used to count as delivered:
    the cursor moved past events no SIEM had."""
    await trail.emit(5)
    receiver.answer.body = body
    loop = DeliveryLoop(_hec(f"http://127.0.0.1:{receiver.port}/services/collector/event"),
                        trail.engine, backoff=FAST)  # fmt: skip
    with pytest.raises(SinkError, match="code"):
        await loop.deliver_once()
    await loop.sink.close()
    assert len(receiver.answer.requests) == 1
    async with trail.engine.connect() as conn:
        row = await get_cursor(conn, "splunk")
    assert row is not None and row.last_seq == 0


async def test_a_hec_200_with_code_0_is_one(trail: Trail, receiver: Receiver) -> None:
    await trail.emit(5)
    receiver.answer.body = b'{"text": "Success", "code": 0}'
    loop = DeliveryLoop(_hec(f"http://127.0.0.1:{receiver.port}/services/collector/event"),
                        trail.engine)  # fmt: skip
    assert await loop.deliver_once() == 5
    await loop.sink.close()
