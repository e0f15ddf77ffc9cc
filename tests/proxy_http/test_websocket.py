"""WebSocket tunnels end to end: a real ``websockets`` client, the node, a real WebSocket
upstream on loopback (plain and TLS), DPoP-bound tokens."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .certs import make_pki
from .conftest import Agent, Harness
from .wsupstream import WsUpstream

POLICY = """
rules:
  - id: ws-chat
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/echo", "/leak", "/reject", "/greet", "/api/**"]}
  - id: ws-no-admin
    effect: deny
    agents: ["*"]
    http: {methods: ["*"], paths: ["/api/admin/**"]}
"""
SECRET = b"ws-upstream-credential-0123456789"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, WsUpstream]]:
    upstream = WsUpstream().start()
    harness = Harness(tmp_path_factory.mktemp("ws"), POLICY)
    harness.put_secret("ws-token", SECRET)
    harness.add_target("ws", base_url=upstream.url,
                       credential={"type": "bearer", "secret": "ws-token"})  # fmt: skip
    yield harness, upstream
    harness.stop()
    upstream.stop()


def _open(harness: Harness, agent: Agent, path: str, **options: Any) -> ClientConnection:
    url = f"{harness.url}/t/ws{path}"
    return connect(
        "ws" + url.removeprefix("http"), additional_headers=agent.headers("GET", url),
        proxy=None, max_size=None, open_timeout=10, ping_interval=None, **options,
    )  # fmt: skip


def _session_events(harness: Harness, request_id: str, kind: str) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in harness.events(kind, target="ws")
                 if e.detail.get("request_id") == request_id]  # fmt: skip
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_allowed_path_echoes_both_ways(node: tuple[Harness, WsUpstream]) -> None:
    harness, upstream = node
    agent = harness.agent()
    big = os.urandom(3 * 1024 * 1024 + 17)
    with _open(harness, agent, "/echo?room=1", subprotocols=["chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"  # negotiated end to end
        ws.send("héllo, wörld")
        assert ws.recv() == "héllo, wörld"
        ws.send(b"\x00\x01\xff")
        assert ws.recv() == b"\x00\x01\xff"
        ws.send(big)
        assert ws.recv() == big
        text = json.dumps({"items": list(range(200_000))})
        ws.send(text)
        assert ws.recv() == text
        assert ws.response is not None
        request_id = ws.response.headers["X-Request-Id"]
        shown = str(ws.response.headers)
    assert SECRET.decode() not in shown and "authorization" not in shown.lower()
    path, seen = upstream.seen[-1]
    assert path == "/echo?room=1"
    assert seen.get_all("Authorization") == [f"Bearer {SECRET.decode()}"]  # injected, alone
    assert "DPoP" not in seen and seen["Upgrade"] == "websocket"
    start = _session_events(harness, request_id, "session.start")
    end = _session_events(harness, request_id, "session.end")
    assert len(start) == 1 and len(end) == 1
    assert start[0].action == {"protocol": "websocket"}
    assert start[0].detail["rule"] == "ws-chat" and list(start[0].detail["query_keys"]) == ["room"]
    assert start[0].detail["subprotocol"] == "chat.v2"
    assert end[0].reason == "closed"
    assert end[0].bytes_in is not None and end[0].bytes_in > len(big)
    assert end[0].bytes_out is not None and end[0].bytes_out > len(big)
    assert end[0].duration_ms is not None and end[0].duration_ms > 0
    decisions = [e for e in harness.events("decision", target="ws")
                 if e.action.get("http", {}).get("path") == "/echo"]  # fmt: skip
    assert decisions and decisions[-1].decision == "allow"
    trail = json.dumps([e.detail for e in harness.events()] + [e.action for e in harness.events()])
    assert SECRET.decode() not in trail


def test_the_target_speaks_first_and_early_bytes_pass(node: tuple[Harness, WsUpstream]) -> None:
    harness, _ = node
    with _open(harness, harness.agent(), "/greet") as ws:
        assert ws.recv(timeout=10) == "hello"
        ws.send("again")
        assert ws.recv(timeout=10) == "again"


def test_a_header_carrying_the_credential_never_reaches_the_agent(
    node: tuple[Harness, WsUpstream],
) -> None:
    harness, upstream = node
    with _open(harness, harness.agent(), "/leak") as ws:
        assert ws.response is not None
        assert "X-Leak" not in ws.response.headers
        ws.send("ok")
        assert ws.recv() == "ok"
    assert upstream.seen[-1][0] == "/leak"


@pytest.mark.parametrize("path", ["/secret", "/api/admin/x", "/api/./admin/x", "/api/%2e%2e/x"])
def test_denied_path_refused_403_and_audited(node: tuple[Harness, WsUpstream], path: str) -> None:
    harness, upstream = node
    before = len(upstream.seen)
    with pytest.raises(InvalidStatus) as refused:
        _open(harness, harness.agent(), path)
    response = refused.value.response
    assert response.status_code == 403
    problem = json.loads(response.body or b"{}")
    assert problem["decision"] == "deny" and problem["request_id"]
    assert response.headers["Connection"] == "close"
    assert len(upstream.seen) == before  # nothing reached the target
    denied = [e for e in harness.events("decision", target="ws") if e.decision == "deny"]
    assert any(e.action["http"]["path"] == path for e in denied)


def test_without_a_token_401(node: tuple[Harness, WsUpstream]) -> None:
    harness, upstream = node
    before = len(upstream.seen)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{harness.port}/t/ws/echo", proxy=None, open_timeout=10)
    assert refused.value.response.status_code == 401
    assert "DPoP" in refused.value.response.headers["WWW-Authenticate"]
    assert len(upstream.seen) == before


def test_a_target_refusing_the_upgrade_is_relayed(node: tuple[Harness, WsUpstream]) -> None:
    harness, _ = node
    with pytest.raises(InvalidStatus) as refused:
        _open(harness, harness.agent(), "/reject")
    response = refused.value.response
    assert response.status_code == 403 and response.body == b"upstream says no\n"
    request_id = response.headers["X-Request-Id"]
    exchange = [e for e in harness.exchanges(1, target="ws")
                if e.detail.get("request_id") == request_id]  # fmt: skip
    assert exchange and exchange[0].action["status"] == 403
    assert exchange[0].detail["upgrade"] == "websocket"


def test_revocation_closes_the_tunnel(node: tuple[Harness, WsUpstream]) -> None:
    harness, upstream = node
    agent = harness.agent(task="T-ws-revoke")
    with _open(harness, agent, "/echo") as ws:
        ws.send("before")
        assert ws.recv() == "before"
        assert ws.response is not None
        request_id = ws.response.headers["X-Request-Id"]
        threading.Timer(0.3, lambda: harness.run(
            harness.identity.revoke("task", "T-ws-revoke", reason="test", by="t")
        )).start()  # fmt: skip
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=15)
        assert time.monotonic() - started < 5
    assert upstream.closed.wait(10)
    end = _session_events(harness, request_id, "session.end")
    assert end and end[0].reason == "revoked"
    assert "no longer valid" in end[0].detail["ended"]


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_other_upgrades_and_api_paths(node: tuple[Harness, WsUpstream]) -> None:
    harness, _ = node
    agent = harness.agent()
    url = f"{harness.url}/t/ws/echo"
    auth = "".join(f"{k}: {v}\r\n" for k, v in agent.headers("GET", url).items()).encode()
    # Not a WebSocket: decided, allowed, and still not forwarded half-way.
    answer = _raw(harness.port, b"GET /t/ws/echo HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                  b"Upgrade: h2c\r\nConnection: close\r\n" + auth + b"\r\n")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 501 ")
    # A WebSocket upgrade to the API is an ordinary request there; the connection closes.
    answer = _raw(harness.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\n")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()
    # A WebSocket upgrade with a body is refused before anything reaches the target.
    auth = "".join(f"{k}: {v}\r\n" for k, v in agent.headers("GET", url).items()).encode()
    answer = _raw(harness.port, b"GET /t/ws/echo HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                  b"Upgrade: websocket\r\nContent-Length: 2\r\n" + auth + b"\r\nhi")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_tls_upstream_verified_with_its_ca(tmp_path: Path) -> None:
    pki = make_pki()
    upstream = WsUpstream(tls=pki.server_context()).start()
    harness = Harness(tmp_path, POLICY)
    try:
        harness.add_target("ws", base_url=upstream.url, ca_bundle=pki.ca_pem)
        harness.add_target("wsbad", base_url=upstream.url)  # system trust: must fail
        agent = harness.agent()
        with _open(harness, agent, "/echo") as ws:
            ws.send(b"over tls")
            assert ws.recv() == b"over tls"
        url = f"{harness.url}/t/wsbad/echo"
        with pytest.raises(InvalidStatus) as refused:
            connect("ws" + url.removeprefix("http"), additional_headers=agent.headers("GET", url),
                    proxy=None, open_timeout=10)  # fmt: skip
        assert refused.value.response.status_code == 502
        assert len(upstream.seen) == 1
    finally:
        harness.stop()
        upstream.stop()


def test_the_node_stopping_ends_the_tunnel(tmp_path: Path) -> None:
    upstream = WsUpstream().start()
    harness = Harness(tmp_path, POLICY)
    try:
        harness.add_target("ws", base_url=upstream.url)
        with _open(harness, harness.agent(), "/echo") as ws:
            ws.send("still here")
            assert ws.recv() == "still here"
            assert ws.response is not None
            request_id = ws.response.headers["X-Request-Id"]
            started = time.monotonic()
            harness.loop.call_soon_threadsafe(setattr, harness.server, "should_exit", True)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=15)
            assert time.monotonic() - started < 5  # not uvicorn's 10 s graceful wait
        end = _session_events(harness, request_id, "session.end")
        assert end and end[0].reason == "shutdown"
    finally:
        harness.stop()
        upstream.stop()


def test_a_101_that_does_not_answer_the_handshake_opens_nothing(
    node: tuple[Harness, WsUpstream],
) -> None:
    """A target that says 101 without a WebSocket handshake (still speaking HTTP) must not
    get a raw tunnel: the agent could smuggle undecided requests through it."""
    harness, _ = node
    listener = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []

    def fake() -> None:
        conn, _ = listener.accept()
        with conn:
            heads.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n")  # fmt: skip
            conn.recv(65536)

    thread = threading.Thread(target=fake, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    harness.add_target("fake", base_url=f"http://127.0.0.1:{port}")
    agent = harness.agent()
    url = f"{harness.url}/t/fake/echo"
    with pytest.raises(InvalidStatus) as refused:
        connect("ws" + url.removeprefix("http"), additional_headers=agent.headers("GET", url),
                proxy=None, open_timeout=10)  # fmt: skip
    assert refused.value.response.status_code == 502
    assert b"not an answer to this handshake" in (refused.value.response.body or b"")
    thread.join(10)
    listener.close()
    assert heads and heads[0].startswith(b"GET /echo HTTP/1.1")
    assert harness.events("session.start", target="fake") == []


def test_the_tunnel_ends_when_the_token_expires(node: tuple[Harness, WsUpstream]) -> None:
    harness, _ = node
    agent = harness.agent(task="T-ws-short", lifetime=3)
    with _open(harness, agent, "/echo") as ws:
        ws.send("short-lived")
        assert ws.recv() == "short-lived"
        assert ws.response is not None
        request_id = ws.response.headers["X-Request-Id"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=15)
    end = _session_events(harness, request_id, "session.end")
    assert end and end[0].reason == "expired"
    assert end[0].duration_ms is not None and end[0].duration_ms < 8000
