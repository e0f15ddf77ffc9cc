"""Review s19 (SIEM export): a HEC token a header cannot carry, an encrypted client key, a
receiver that never answers while the node stops, a cursor moved past the trail, a JSON
Lines file's name, a syslog batch still in the process, a HEC behind a path prefix.

Real parts: the SQLite trail of the ``trail`` fixture, real sockets on loopback, the test CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import update

from tests.audit_export.certs import Certs
from tests.audit_export.conftest import Trail, wait_for
from tether.audit.sinks.base import DeliveryLoop, SinkError, sink_status
from tether.audit.sinks.config import (
    HecSinkConfig,
    JsonlSinkConfig,
    SinkConfigError,
    SyslogSinkConfig,
    WebhookSinkConfig,
)
from tether.audit.sinks.cursors import audit_sink_cursors, get_cursor
from tether.audit.sinks.hec import HecSink
from tether.audit.sinks.jsonl import JsonlSink
from tether.audit.sinks.runner import build_sink, start_sinks
from tether.audit.sinks.syslog import SyslogSink
from tether.audit.sinks.tls import client_context

TOKEN = "0d6c8a7e-5b1f-4e8a-9c3d-s3cr3t70k3n"


class BlackHole:
    """A TCP server that accepts every connection and never reads nor answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


@pytest.mark.parametrize(
    "token",
    [
        TOKEN + "\n",
        TOKEN + "\r\nX-Injected: 1",
        TOKEN.replace("s3cr3t", "s3cr\u00e9t"),
        "a " + TOKEN,
    ],
)
def test_an_hec_token_a_header_cannot_carry_is_refused_at_start_without_naming_it(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token read from a file or a Kubernetes secret ends in a newline: the sink started,
    and at every batch httpx's ``Illegal header value b'Splunk <token>\\n'`` went, token
    and all, into the node's log, the cursor row and ``tether audit sinks``."""
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", token)
    for secret in ({"token_env": "SPLUNK_HEC_TOKEN"}, {"token": token}):
        config = HecSinkConfig(
            name="splunk", kind="hec", url="http://127.0.0.1:8088/services/collector", **secret
        )
        with pytest.raises(SinkConfigError) as refused:
            build_sink(config)
        message = str(refused.value)
        assert "s3cr" not in message and "HEC token" in message


def test_an_hec_token_that_fits_a_header_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", TOKEN)
    config = HecSinkConfig(
        name="splunk", kind="hec", url="http://127.0.0.1:8088/", token_env="SPLUNK_HEC_TOKEN"
    )
    sink = build_sink(config)
    assert sink.name == "splunk"
    asyncio.run(sink.close())


def test_an_encrypted_client_key_is_refused_clearly(certs: Certs, tmp_path: Path) -> None:
    """OpenSSL asked for the passphrase on the terminal (holding the node's start), then
    the sink was refused with ``TLS files unusable: [Errno 22] Invalid argument``."""
    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "client-encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(SinkConfigError) as refused:
        client_context(certs.ca, certs.client_cert, encrypted)
    message = str(refused.value)
    assert "unencrypted private key" in message and str(encrypted) in message
    assert "Errno" not in message
    client_context(certs.ca, certs.client_cert, certs.client_key)  # the plain key still works


async def test_a_receiver_that_never_answers_does_not_hold_the_nodes_stop(
    trail: Trail, black_hole: BlackHole
) -> None:
    """The node stops its sinks last; a batch in flight to a receiver that accepted the
    connection and never answers held that stop for the sink's whole deadline (here 30 s
    of read timeout; up to 4 x 600 s, or an hour of indexer acknowledgement). It is now
    abandoned after a grace period, and the cursor has not moved: it is sent again."""
    await trail.emit(5)
    config = WebhookSinkConfig(
        name="soar",
        kind="webhook",
        url=f"http://127.0.0.1:{black_hole.port}/hook",
        secret="s",
        timeout=30,
        poll_interval=0.05,
    )
    runner = start_sinks(trail.engine, [config])
    await wait_for(lambda: bool(black_hole.accepted), 20, "the delivery to start")
    await asyncio.sleep(0.3)  # the request is sent and waits for its answer
    started = time.monotonic()
    await runner.stop()
    assert time.monotonic() - started < 15
    async with trail.engine.connect() as conn:
        row = await get_cursor(conn, "soar")
    assert row is not None
    assert row.last_seq == 0, "an unacknowledged batch moved the cursor"
    assert row.holder is None, "the stopped node kept the lease"


async def test_a_cursor_moved_past_the_trail_is_reported_not_waited_on(
    trail: Trail, tmp_path: Path
) -> None:
    """Someone with write access to the database sets a sink's cursor ahead of the trail:
    the sink waited, shown ``ok`` at lag 0 (``--max-lag`` content), and then skipped every
    event up to it, which its receiver never gets. It now fails, visibly, while it is so."""
    await trail.emit(5)
    sink = JsonlSink(JsonlSinkConfig(name="file", kind="jsonl", path=tmp_path / "out.jsonl"))
    loop = DeliveryLoop(sink, trail.engine, batch_size=100, poll_interval=0.05)
    assert await loop.deliver_once() == 5
    async with trail.engine.begin() as conn:
        await conn.execute(update(audit_sink_cursors).values(last_seq=40))
    with pytest.raises(SinkError, match=r"the cursor \(40\) is past the trail's last event \(5\)"):
        await loop.deliver_once()
    await loop._step()
    [status] = await sink_status(trail.engine, ["file"])
    assert status.last_error is not None and "past the trail's last event" in status.last_error
    await sink.close()


async def test_a_new_or_rotated_jsonl_file_has_its_directory_flushed(
    trail: Trail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fsync`` of a file does not make its name durable: after a power loss, a file
    created (or renamed by a rotation) since its directory was last flushed can be gone,
    with the batches the cursor already counted as delivered."""
    flushed: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    config = JsonlSinkConfig(name="file", kind="jsonl", path=tmp_path / "out.jsonl",
                             max_bytes=4096, keep=2)  # fmt: skip
    sink = JsonlSink(config)
    events = await trail.emit(12)
    await sink.deliver(events[:1])  # creates the file
    assert flushed == ["file", "dir"]
    await sink.deliver(events[1:2])  # appends: the name is already durable
    assert flushed == ["file", "dir", "file"]
    flushed.clear()
    await sink.deliver(events[2:])  # too large for the file: rotated first
    assert (tmp_path / "out.jsonl.1").exists()
    assert flushed == ["file", "dir"]
    await sink.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_a_syslog_batch_is_acknowledged_only_once_it_left_the_process(
    trail: Trail, certs: Certs, transport: str
) -> None:
    """asyncio's ``drain`` returns while up to 64 KiB are still in the transport's buffer
    (and without waiting at all below that): with a receiver slow to read, ``deliver``
    returned, the cursor moved, and the batch was still in the node's memory, where a
    ``SIGKILL`` lost it. Here the receiver reads nothing until the node "dies" (its
    connection aborted, which drops what the process still holds), then reads all: every
    batch acknowledged before must be there."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    peers: list[socket.socket] = []

    def accept() -> None:  # and, for TLS, the handshake; then nothing is read
        peer, _ = server.accept()
        if transport == "tls":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certs.server_cert, certs.server_key)
            peer = context.wrap_socket(peer, server_side=True)
        peers.append(peer)

    accepting = threading.Thread(target=accept, daemon=True)
    accepting.start()
    tls = {"ca_file": certs.ca, "server_name": "localhost"} if transport == "tls" else {}
    config = SyslogSinkConfig(name="rs", kind="syslog", host="127.0.0.1", timeout=1,
                              port=server.getsockname()[1], transport=transport, **tls)  # fmt: skip
    sink = SyslogSink(config)
    events = await trail.emit(20)
    large = [dataclasses.replace(event, action={"command": "x" * 4000}) for event in events]
    acknowledged, connection = 0, None
    try:
        for round_ in range(3000):
            try:
                await sink.deliver([large[round_ % len(large)]])
            except SinkError:
                break  # the receiver's buffers are full: not acknowledged
            connection = connection or sink._writer
            acknowledged += 1
        else:
            raise AssertionError("the receiver never filled up")
        assert connection is not None and peers
        connection.transport.abort()  # SIGKILL: what the process held is gone
        await sink.close()
        received = await asyncio.to_thread(_whole_frames, peers[0])
        assert received >= acknowledged, f"{acknowledged - received} acknowledged batch(es) lost"
    finally:
        server.close()
        for peer in peers:
            peer.close()


def _whole_frames(peer: socket.socket) -> int:
    """How many whole octet-counted frames the peer can read until the stream ends."""
    peer.settimeout(5)
    data = bytearray()
    with contextlib.suppress(TimeoutError, OSError):  # ssl.SSLError: an aborted TLS stream
        while chunk := peer.recv(1 << 20):
            data += chunk
    frames, position = 0, 0
    while (space := data.find(b" ", position)) > 0:
        end = space + 1 + int(data[position:space])
        if end > len(data):
            break
        frames, position = frames + 1, end
    return frames


class PrefixedCollector:
    """A HEC behind a gateway that routes only ``/splunk/services/collector/...`` to it:
    events get an ``ackId``; acks are reported indexed; any other path is 404."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                path = self.path.partition("?")[0]
                collector.paths.append(path)
                if path == "/splunk/services/collector/event":
                    answer: dict[str, Any] = {"text": "Success", "code": 0, "ackId": 7}
                elif path == "/splunk/services/collector/ack":
                    asked = json.loads(body)["acks"]
                    answer = {"acks": {str(ack): True for ack in asked}}
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_indexer_acknowledgement_behind_a_path_prefix(trail: Trail) -> None:
    """The ack endpoint was computed by ``urljoin(url, "/services/collector/ack")``, which
    drops a gateway's prefix: with ``use_ack`` behind one, every batch failed forever."""
    collector = PrefixedCollector()
    try:
        events = await trail.emit(3)
        config = HecSinkConfig(
            name="splunk", kind="hec", token=TOKEN, use_ack=True, ack_timeout=5,
            url=f"http://127.0.0.1:{collector.port}/splunk/services/collector/event",
        )  # fmt: skip
        sink = HecSink(config)
        await sink.deliver(events)
        await sink.close()
        assert collector.paths == [
            "/splunk/services/collector/event",
            "/splunk/services/collector/ack",
        ]
    finally:
        collector.server.shutdown()
        collector.server.server_close()
