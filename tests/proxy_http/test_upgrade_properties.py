"""Property tests of the upgrade parsers: the agent's request (``upgrade.Upgrade``) and the
target's answer (``websocket._answer``). Arbitrary bytes never crash them, and nothing
switches protocols unless the request asked for it and the target agreed to WebSocket."""

from __future__ import annotations

import asyncio

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.proxy.http.handshake import accept_for, answer
from tether.proxy.http.upgrade import Switched, Upgrade
from tether.proxy.http.upstream import Connection, Origin, UpstreamError

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
KEY_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3's example
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ,=/-", max_size=20)


class _Sink:
    """Enough of a StreamWriter to collect what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def _upgrade(data: bytes) -> tuple[Upgrade, _Sink]:
    sink = _Sink()
    upgrade = Upgrade(_reader(data), sink, 16384, asyncio.Event(), asyncio.Event())  # type: ignore[arg-type]
    return upgrade, sink


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_as_a_request_never_crash_nor_switch(data: bytes) -> None:
    async def run() -> None:
        upgrade, sink = await _upgrade(data)
        request = await upgrade.head()
        if request is None:
            return
        try:
            switched = await upgrade.accept([])
        except (ValueError, ConnectionResetError):
            assert not sink.data.startswith(b"HTTP/1.1 101")
            return
        assert isinstance(switched, Switched)
        assert any(name.lower() == b"upgrade" for name, _ in request.headers)

    asyncio.run(run())


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "OPTIONS"]),
    headers=st.lists(st.tuples(TOKEN, VALUE), max_size=6),
    upgrade=st.sampled_from([None, "websocket", "h2c"]),
    body=st.binary(max_size=20),
    early=st.binary(max_size=30),
)
def test_a_switch_only_for_a_bodyless_upgrade_request(
    method: str, headers: list[tuple[str, str]], upgrade: str | None, body: bytes, early: bytes
) -> None:
    lines = [f"{method} /t/x/echo HTTP/1.1", "host: x"]
    lines += [f"{n}: {v}" for n, v in headers if n not in ("content-length", "transfer-encoding",
                                                          "upgrade", "connection")]  # fmt: skip
    if upgrade is not None:
        lines += ["connection: upgrade", f"upgrade: {upgrade}"]
    if body:
        lines.append(f"content-length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body + early

    async def run() -> None:
        request, sink = await _upgrade(data)
        assert await request.head() is not None
        try:
            switched = await request.accept([(b"x-test", b"1")])
        except ValueError:
            assert upgrade is None or body
            assert not sink.data
            return
        assert upgrade is not None and not body
        assert sink.data.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket\r\n" in sink.data.lower()
        assert switched.early + await switched.reader.read() == early  # handed over, unparsed

    asyncio.run(run())


def _connection(answer: bytes) -> Connection:
    connection = Connection(Origin("127.0.0.1", 1, None), _reader(answer), _Sink(), 16384)  # type: ignore[arg-type]
    head = [(b"host", b"x"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    connection.h11.send(h11.Request(method=b"GET", target=b"/", headers=head))
    connection.h11.send(h11.EndOfMessage())
    return connection


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_as_an_answer_never_crash(data: bytes) -> None:
    async def run() -> None:
        try:
            response = await answer(_connection(data), 5, b"expected")
        except UpstreamError:
            return
        assert response.status == 101 or response.status >= 200
        if response.status == 101:
            assert b"101" in data and b"expected" in data

    asyncio.run(run())


@settings(max_examples=100, deadline=None)
@given(
    status=st.sampled_from([100, 101, 103, 200, 400, 426]),
    upgrade=st.sampled_from([None, "websocket", "WebSocket", "h2c", "websocket, h2c"]),
    accepted=st.sampled_from([None, KEY_ACCEPT, "AAAA", f"{KEY_ACCEPT}, {KEY_ACCEPT}"]),
    tail=st.binary(max_size=30),
)
def test_only_a_websocket_101_switches(
    status: int, upgrade: str | None, accepted: str | None, tail: bytes
) -> None:
    head = f"HTTP/1.1 {status} X\r\n"
    if upgrade is not None:
        head += f"connection: upgrade\r\nupgrade: {upgrade}\r\n"
    if accepted is not None:
        head += f"sec-websocket-accept: {accepted}\r\n"
    if status >= 200:
        head += "content-length: 0\r\n"
    data = (head + "\r\n").encode() + tail

    async def run() -> None:
        try:
            response = await answer(_connection(data), 5, KEY_ACCEPT.encode())
        except UpstreamError:
            assert status in (100, 101, 103)
            return
        if response.status == 101:
            assert status == 101 and upgrade is not None and upgrade.lower() == "websocket"
            assert accepted == KEY_ACCEPT
        else:
            assert response.status == status >= 200

    asyncio.run(run())


def test_accept_value_of_the_rfc_example() -> None:
    assert accept_for(b"dGhlIHNhbXBsZSBub25jZQ==") == KEY_ACCEPT.encode()
