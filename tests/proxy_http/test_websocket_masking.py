"""The injected credential masked in a WebSocket tunnel's frames, end to end: a real
``websockets`` client, the node, a real WebSocket upstream on loopback that echoes the
handshake (``websockets``) and raw-socket targets that send chosen frames."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .conftest import Agent, Harness
from .wsupstream import WsUpstream

POLICY = """
rules:
  - id: ws-any
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/**"]}
"""
SECRET = b"ws-upstream-credential-0123456789"
MASK = "*" * len(SECRET)
BEARER = {"type": "bearer", "secret": "ws-token"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, WsUpstream]]:
    upstream = WsUpstream().start()
    harness = Harness(tmp_path_factory.mktemp("wsmask"), POLICY)
    harness.put_secret("ws-token", SECRET)
    harness.add_target("ws", base_url=upstream.url, credential=BEARER)
    harness.add_target("wsplain", base_url=upstream.url)
    yield harness, upstream
    harness.stop()
    upstream.stop()


def _open(harness: Harness, agent: Agent, url_path: str, **options: Any) -> ClientConnection:
    url = f"{harness.url}/t{url_path}"
    headers = {**agent.headers("GET", url), **options.pop("headers", {})}
    return connect(
        "ws" + url.removeprefix("http"), additional_headers=headers, proxy=None,
        max_size=None, open_timeout=10, ping_interval=None, **options,
    )  # fmt: skip


def _request_id(ws: ClientConnection) -> str:
    assert ws.response is not None
    return ws.response.headers["X-Request-Id"]


def _session_end(harness: Harness, target: str, request_id: str) -> Any:
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in harness.events("session.end", target=target)
                 if e.detail.get("request_id") == request_id]  # fmt: skip
        if found or time.monotonic() > deadline:
            assert len(found) == 1
            return found[0]
        time.sleep(0.05)


def _no_secret_in_the_trail(harness: Harness) -> None:
    events = harness.events()
    trail = json.dumps([e.detail for e in events] + [e.action for e in events])
    assert SECRET.decode() not in trail


def test_echoed_headers_are_masked_in_a_text_message(node: tuple[Harness, WsUpstream]) -> None:
    harness, upstream = node
    offer = {"Sec_WebSocket_Extensions": "permessage-deflate"}  # the folded spelling too
    with _open(harness, harness.agent(), "/ws/headers", headers=offer) as ws:
        echoed = ws.recv(timeout=10)
        ws.send("and on")  # the agent's direction is untouched
        assert ws.recv(timeout=10) == "and on"
        request_id = _request_id(ws)
        assert "Sec-WebSocket-Extensions" not in ws.response.headers  # type: ignore[union-attr]
    path, seen = upstream.seen[-1]
    assert path == "/headers"
    sent = str(seen)
    assert f"Bearer {SECRET.decode()}" in sent  # the target got it, and echoed it
    assert "sec-websocket-extensions" not in sent.lower().replace("_", "-")  # nothing offered
    assert echoed == sent.replace(SECRET.decode(), MASK)  # masked in place, same length
    end = _session_end(harness, "ws", request_id)
    assert end.reason == "closed" and end.detail["credential_masked"] == 1
    _no_secret_in_the_trail(harness)


def test_a_binary_message_is_masked(node: tuple[Harness, WsUpstream]) -> None:
    harness, _ = node
    with _open(harness, harness.agent(), "/ws/binary") as ws:
        assert ws.recv(timeout=10) == b"\x00Bearer " + MASK.encode() + b"\xff"


def _streamed(ws: ClientConnection, timeout: float = 10) -> list[Any]:
    """The fragments of one message (``recv_streaming`` has no timeout: a broken broker
    would hang the suite)."""
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(ws.recv_streaming()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), "no whole message within the timeout"
    return got


def test_a_secret_cut_across_fragments_is_masked(node: tuple[Harness, WsUpstream]) -> None:
    harness, _ = node
    with _open(harness, harness.agent(), "/ws/fragments") as ws:
        fragments = [f for f in _streamed(ws) if f]
        ws.send("next")
        assert ws.recv(timeout=10) == "next"
        request_id = _request_id(ws)
    auth = f"Bearer {SECRET.decode()}"
    cut = len(auth) // 2
    sent = ["got: " + auth[: cut - 3], auth[cut - 3 : cut], auth[cut:] + " tail"]
    assert [len(f) for f in fragments] == [len(f) for f in sent]  # each frame as long
    assert "".join(fragments) == f"got: Bearer {MASK} tail"
    assert _session_end(harness, "ws", request_id).detail["credential_masked"] == 1


def test_a_close_reason_is_masked(node: tuple[Harness, WsUpstream]) -> None:
    harness, _ = node
    with _open(harness, harness.agent(), "/ws/close") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        request_id = _request_id(ws)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, MASK)
    end = _session_end(harness, "ws", request_id)
    assert end.detail["credential_masked"] == 1


def test_without_a_credential_the_tunnel_is_unchanged(node: tuple[Harness, WsUpstream]) -> None:
    harness, upstream = node
    with _open(harness, harness.agent(), "/wsplain/headers") as ws:
        echoed = ws.recv(timeout=10)
        assert ws.response is not None
        chosen = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        request_id = _request_id(ws)
    assert "Authorization" not in upstream.seen[-1][1]
    assert echoed == str(upstream.seen[-1][1])
    assert chosen.startswith("permessage-deflate")  # compression negotiated end to end
    assert "credential_masked" not in _session_end(harness, "wsplain", request_id).detail


# --- raw targets: chosen frames -----------------------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, first: int = 0) -> bytes:
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | first | opcode, len(payload)]) + payload


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The agent's (masked) frames, unmasked: (opcode, payload); a partial one left out."""
    found, pos = [], 0
    while pos + 2 <= len(data):
        size, at = data[pos + 1] & 0x7F, pos + 2
        if size == 126:
            size, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        key, at = data[at : at + 4], at + 4
        if at + size > len(data):
            break
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[at : at + size]))
        found.append((data[pos] & 0x0F, payload))
        pos = at + size
    return found


class RawTarget:
    """A WebSocket target on a raw socket: answers one handshake with a real 101 (plus
    ``extra`` headers), sends ``frames(request head)``, and keeps what the agent sent."""

    def __init__(self, frames: Callable[[bytes], bytes], extra: bytes = b"") -> None:
        self.frames, self.extra = frames, extra
        self.head = b""
        self.received = b""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            while b"\r\n\r\n" not in self.head:
                self.head += conn.recv(65536)
            key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", self.head)
            assert key is not None
            guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(hashlib.sha1(key.group(1) + guid).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
                         + self.extra + b"\r\n" + self.frames(self.head))  # fmt: skip
            try:
                while data := conn.recv(65536):
                    self.received += data
                    if any(op == 0x8 for op, _ in client_frames(self.received)):
                        conn.sendall(frame(0x8, b""))  # the closing handshake's answer
                        return
            except OSError:
                pass

    def stop(self) -> None:
        self.thread.join(10)
        self.listener.close()


def _raw_target(harness: Harness, name: str, target: RawTarget) -> None:
    harness.add_target(name, base_url=f"http://127.0.0.1:{target.port}", credential=BEARER)


def test_a_ping_between_fragments_is_masked_and_waits_its_turn(
    node: tuple[Harness, WsUpstream],
) -> None:
    harness, _ = node
    sent = (frame(0x1, b"a=" + SECRET[:10], fin=False) + frame(0x9, b"ping " + SECRET)
            + frame(0x0, SECRET[10:] + b"."))  # fmt: skip
    target = RawTarget(lambda head: sent)
    try:
        _raw_target(harness, "rawping", target)
        with _open(harness, harness.agent(), "/rawping/x") as ws:
            assert ws.recv(timeout=10) == f"a={MASK}."
            request_id = _request_id(ws)
    finally:
        target.stop()
    pongs = [p for op, p in client_frames(target.received) if op == 0xA]
    assert pongs == [b"ping " + MASK.encode()]  # the agent saw the ping masked
    assert _session_end(harness, "rawping", request_id).detail["credential_masked"] == 2


def test_a_101_selecting_an_extension_opens_no_tunnel(node: tuple[Harness, WsUpstream]) -> None:
    harness, _ = node
    target = RawTarget(lambda head: b"", extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    try:
        _raw_target(harness, "rawext", target)
        agent = harness.agent()
        with pytest.raises(InvalidStatus) as refused:
            _open(harness, agent, "/rawext/x")
    finally:
        target.stop()
    response = refused.value.response
    assert response.status_code == 502
    assert b"selected the WebSocket extension 'permessage-deflate'" in (response.body or b"")
    assert b"sec-websocket-extensions" not in target.head.lower()  # the agent's offer dropped
    request_id = response.headers["X-Request-Id"]
    exchange = [e for e in harness.exchanges(1, target="rawext")
                if e.detail.get("request_id") == request_id]  # fmt: skip
    assert exchange and exchange[0].action["status"] == 502
    assert "permessage-deflate" in exchange[0].detail["error"]
    assert harness.events("session.start", target="rawext") == []


@pytest.mark.parametrize(
    ("name", "sent", "why"),
    [
        ("rawrsv1", frame(0x1, b"deflated " + SECRET, first=0x40), "RSV bit"),
        ("rawmasked", bytes([0x81, 0x84]) + b"\x01\x02\x03\x04abcd", "is masked"),
        ("rawopcode", frame(0x3, SECRET), "unknown opcode"),
    ],
)
def test_frames_that_cannot_be_scanned_end_the_tunnel(
    node: tuple[Harness, WsUpstream], name: str, sent: bytes, why: str
) -> None:
    harness, _ = node
    target = RawTarget(lambda head: sent)
    try:
        _raw_target(harness, name, target)
        with _open(harness, harness.agent(), f"/{name}/x") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            request_id = _request_id(ws)
    finally:
        target.stop()
    assert closed.value.rcvd is None  # the broker cut the connection: nothing relayed
    end = _session_end(harness, name, request_id)
    assert end.reason == "error"
    assert end.detail["ended"].startswith("the target's frames cannot be masked")
    assert why in end.detail["ended"]
    assert end.bytes_out == 0
