"""HTTP receivers that misbehave: a 2xx that is not an acknowledgement, error text built to
drive the operator's terminal, and sink URLs that carry credentials.

Each receiver is a real HTTP server on loopback (``http.server`` in a thread); the store is
the real SQLite trail of the ``trail`` fixture.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from tests.audit_export.conftest import Trail, wait_for
from tests.audit_export.receivers.http_receiver import hec_objects
from tether.audit.events import AuditEvent
from tether.audit.sinks import cursors
from tether.audit.sinks.base import DeliveryLoop, SinkError, sink_status
from tether.audit.sinks.config import Backoff, HecSinkConfig, WebhookSinkConfig
from tether.audit.sinks.cursors import get_cursor
from tether.audit.sinks.hec import HecSink
from tether.audit.sinks.webhook import WebhookSink
from tether.cli.common import configure_logging
from tether.cli.main import app

FAST = Backoff(initial=0.05, max=0.2, jitter=0)


class Answer:
    """What the receiver answers to every POST, and what it was sent."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.max_body: int | None = None  # larger bodies get 413, as behind a proxy
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
                body = self.rfile.read(length)
                too_large = answer.max_body is not None and length > answer.max_body
                answer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body,
                     "accepted": not too_large and 200 <= answer.status < 300}
                )  # fmt: skip
                self.send_response(413 if too_large else answer.status)
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


ESCAPES = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;owned\x07\x1b[2J\x9b6n"


async def test_receiver_error_text_cannot_drive_the_operators_terminal(
    trail: Trail, receiver: Receiver, tmp_path: Path
) -> None:
    """A receiver's error text is stored as the sink's last error and shown by
    ``tether audit sinks``. It used to reach the operator's terminal as it was: escape
    sequences that set the clipboard (OSC 52), retitle the window or clear the screen."""
    await trail.emit(3)
    receiver.answer.status = 400
    receiver.answer.body = json.dumps({"text": f"bad {ESCAPES} request", "code": 6}).encode()
    loop = DeliveryLoop(_hec(f"http://127.0.0.1:{receiver.port}/services/collector/event"),
                        trail.engine, backoff=FAST)  # fmt: skip
    assert await loop._step() > 0  # failed: the error is recorded on the cursor row
    await loop.sink.close()
    [status] = await sink_status(trail.engine)
    assert status.last_error is not None and "bad" in status.last_error
    assert not set(status.last_error) & set("\x1b\x07\x9b")

    async with trail.engine.begin() as conn:  # as an older node stored it
        await conn.execute(
            update(cursors.audit_sink_cursors).values(last_error=f"old {ESCAPES} error")
        )
    arguments = ["audit", "sinks", "--data-dir", str(tmp_path)]
    done = await asyncio.to_thread(CliRunner().invoke, app, arguments)  # it runs its own loop
    assert done.exit_code == 0, done.output
    assert "old" in done.stdout and "error" in done.stdout
    assert not set(done.stdout) & set("\x1b\x07\x9b"), repr(done.stdout)


@pytest.mark.parametrize("kind", ["hec", "webhook"])
async def test_credentials_in_a_sink_url_stay_out_of_errors(
    trail: Trail, receiver: Receiver, kind: str
) -> None:
    """A URL may carry credentials (``user:password@``, ``?token=``). Errors name the URL,
    and they are logged and stored for ``tether audit sinks``: only scheme, host, port and
    path are named there now."""
    await trail.emit(2)
    receiver.answer.status = 503
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    for port in (receiver.port, dead_port):  # an error status, then no receiver at all
        url = f"http://collector:pw-SECRET1@127.0.0.1:{port}/in/path?token=qs-SECRET2#f"
        sink: Any
        if kind == "hec":
            sink = _hec(url)
        else:
            sink = WebhookSink(
                WebhookSinkConfig(name="splunk", kind="webhook", url=url, secret="s")  # type: ignore[arg-type]
            )
        loop = DeliveryLoop(sink, trail.engine, backoff=FAST, node_id="node-1")
        await loop._step()
        await loop.sink.close()
        [status] = await sink_status(trail.engine)
        error = status.last_error or ""
        assert f"127.0.0.1:{port}/in/path" in error, error
        assert "SECRET" not in error and "collector" not in error, error


async def test_an_answer_no_parser_expected_fails_the_batch_not_the_loop(
    trail: Trail, receiver: Receiver
) -> None:
    """A collector answering 200 with JSON nested 100,000 deep made ``response.json()``
    raise RecursionError, which no handler expected: the sink's delivery task ended, and
    the sink delivered nothing more until the node restarted, while ``tether audit sinks``
    showed it ``ok``. It fails that batch, visibly, and the loop goes on: once the
    collector answers properly, everything arrives. (The answer is now read only up to
    64 KiB, so it no longer reaches the parser whole; the loop's own guard is tested in
    test_sink_loop.py.)"""
    await trail.emit(4)
    receiver.answer.body = b"[" * 100_000 + b"]" * 100_000
    loop = DeliveryLoop(_hec(f"http://127.0.0.1:{receiver.port}/services/collector/event"),
                        trail.engine, backoff=FAST)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait_for(lambda: loop.failures >= 2, 20, "two failed deliveries")
        [status] = await sink_status(trail.engine)
        assert status.last_error is not None and "status 200" in status.last_error
        receiver.answer.body = b'{"text": "Success", "code": 0}'
        await wait_for(lambda: loop.delivered == 4, 20, "the batch, once answered properly")
    finally:
        stop.set()
        await task


@pytest.mark.parametrize("kind", ["hec", "webhook"])
async def test_one_event_too_large_for_the_receiver_does_not_stop_the_sink(
    trail: Trail, receiver: Receiver, kind: str
) -> None:
    """Behind a body limit (a proxy's, HEC's max_content_length) the receiver answers 413.
    The same batch was refused forever: an agent that made one event large enough (a
    100 kB command) stopped the sink, and nothing after it reached the SIEM. The batch
    is now sent in halves, and the one event still too large shrunk and marked."""
    commands = ["id", "ls", "w", "echo " + "x" * 100_000, "pwd", "uptime", "date"]
    for command in commands:
        await trail.log.append(
            AuditEvent(kind="ssh.command", agent="bot", action={"command": command})
        )
    receiver.answer.max_body = 20_000
    url = f"http://127.0.0.1:{receiver.port}/services/collector/event"
    if kind == "hec":
        receiver.answer.body = b'{"text": "Success", "code": 0}'
        sink: Any = _hec(url)
    else:
        sink = WebhookSink(WebhookSinkConfig(name="splunk", kind="webhook", url=url, secret="s"))  # type: ignore[arg-type]
    loop = DeliveryLoop(sink, trail.engine, backoff=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait_for(lambda: loop.delivered == 7, 20, "every event")
    finally:
        stop.set()
        await task
    received: list[dict[str, Any]] = []
    for request in receiver.answer.requests:
        if request["accepted"]:
            if kind == "hec":
                received += [obj["event"] for obj in hec_objects(request["body"])]
            else:
                received += json.loads(request["body"])
    seqs = [event["metadata"]["sequence"] for event in received]
    assert sorted(set(seqs)) == list(range(1, 8)) and seqs == sorted(seqs)
    big = next(event for event in received if event["metadata"]["sequence"] == 4)
    assert big["unmapped"]["tether"]["truncated"] is True
    assert big["message"].startswith("echo xxx") and len(json.dumps(big)) <= 20_000


async def test_the_node_log_does_not_write_a_sink_urls_credentials(
    trail: Trail, receiver: Receiver
) -> None:
    """At the node's default log level (info) httpx logged every request with its whole
    URL: a sink url's password and token went to the log at each batch."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    try:
        configure_logging("info")
        root.addHandler(Keep())
        await trail.emit(3)
        receiver.answer.body = b'{"text": "Success", "code": 0}'
        url = f"http://collector:pw-SECRET1@127.0.0.1:{receiver.port}/in?token=qs-SECRET2"
        loop = DeliveryLoop(_hec(url), trail.engine)
        assert await loop.deliver_once() == 3
        await loop.sink.close()
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert receiver.answer.requests  # it was sent, with its credentials, to the receiver
    assert not [r for r in records if "SECRET" in r.getMessage()], [r.getMessage() for r in records]


class Trickler:
    """A receiver that reads the request, then answers one byte every 0.2 s, without end,
    or floods an endless chunked answer, as fast as it can."""

    def __init__(self, flood: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flood = flood
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))  # fmt: skip
            while len(body) < length:
                body += conn.recv(65536)
            try:
                if self.flood:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"[" * (1 << 20))
                    while not self.stop.is_set():
                        conn.sendall(chunk)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stop.is_set():  # a header that never ends, a byte at a time
                    conn.sendall(b"a")
                    time.sleep(0.2)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.mark.parametrize("kind", ["hec", "webhook"])
@pytest.mark.parametrize("flood", [False, True], ids=["trickle", "flood"])
async def test_a_receiver_that_never_finishes_its_answer_fails_the_batch_in_time(
    trail: Trail, kind: str, flood: bool
) -> None:
    """httpx's timeout is per read: an answer trickled a byte every 0.2 s never tripped a
    1 s timeout, and held the delivery (and the sink's lease) without end; an endless
    answer was read into memory whole. Now an exchange has one deadline (4 x timeout) and
    the answer is read up to 64 KiB."""
    await trail.emit(2)
    server = Trickler(flood)
    url = f"http://127.0.0.1:{server.port}/services/collector/event"
    sink: Any
    if kind == "hec":
        sink = HecSink(HecSinkConfig(name="s", kind="hec", url=url, token="t", timeout=1))  # type: ignore[arg-type]
    else:
        sink = WebhookSink(
            WebhookSinkConfig(name="s", kind="webhook", url=url, secret="s", timeout=1)
        )  # type: ignore[arg-type]
    loop = DeliveryLoop(sink, trail.engine)
    started = time.monotonic()
    try:
        if flood and kind == "webhook":  # a 2xx acknowledges; the rest is not read
            assert await asyncio.wait_for(loop.deliver_once(), 15) == 2
        else:  # trickled: no whole answer in time; flooded HEC: 64 KiB of "[", not JSON
            with pytest.raises(SinkError):
                await asyncio.wait_for(loop.deliver_once(), 15)
    finally:
        server.close()
        await sink.close()
    assert time.monotonic() - started < 8
