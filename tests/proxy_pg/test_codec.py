"""The wire codec: strict decoding, limits, and round trips (hypothesis)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.proxy.pg import audit as pg_audit
from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import framing

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=40)
blobs = st.binary(max_size=40)
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
fmt = st.sampled_from([0, 1])


@st.composite
def binds(draw: st.DrawFn) -> c.Bind:
    params = tuple(draw(st.lists(st.one_of(st.none(), blobs), max_size=5)))
    formats = draw(st.sampled_from([(), (draw(fmt),), tuple(draw(fmt) for _ in params)]))
    results = tuple(draw(st.lists(fmt, max_size=4)))
    return c.Bind(draw(texts), draw(texts), formats, params, results)


frontend_messages = st.one_of(
    st.builds(c.Query, texts),
    st.builds(c.Parse, texts, texts, st.lists(i32, max_size=4).map(tuple)),
    binds(),
    st.builds(c.Describe, st.sampled_from(["S", "P"]), texts),
    st.builds(c.Close, st.sampled_from(["S", "P"]), texts),
    st.builds(c.Execute, texts, st.integers(0, 2**31 - 1)),
    st.builds(c.Sync),
    st.builds(c.Flush),
    st.builds(c.Terminate),
    st.builds(c.CopyDone),
    st.builds(c.CopyData, blobs),
    st.builds(c.CopyFail, texts),
    st.builds(c.PasswordMessage, blobs),
    st.builds(c.FunctionCall, blobs),
)
startup_packets = st.one_of(
    st.builds(c.SSLRequest),
    st.builds(c.GSSENCRequest),
    st.builds(c.CancelRequest, i32, st.binary(min_size=4, max_size=4)),
    st.dictionaries(texts.filter(bool), texts, max_size=4).map(
        lambda d: c.StartupMessage(c.PROTOCOL_3_0, tuple(d.items()))
    ),
)


def decoded(data: bytes, startup: bool = False) -> list[object]:
    decoder = framing.FrontendDecoder(max_message=1 << 16)
    if not startup:
        decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    return [m for m, _ in decoder.feed(data)]


@PROPS
@given(frontend_messages)
def test_frontend_round_trip(message: c.FrontendMessage) -> None:
    raw = message.encode()
    decoder = framing.FrontendDecoder()
    decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    assert decoder.feed(raw) == [(message, raw)]


@PROPS
@given(startup_packets)
def test_startup_round_trip(packet: c.StartupPacket) -> None:
    raw = packet.encode()
    assert framing.FrontendDecoder().feed(raw) == [(packet, raw)]


@PROPS
@given(st.lists(frontend_messages, max_size=6), st.integers(1, 7))
def test_split_anywhere(messages: list[c.FrontendMessage], step: int) -> None:
    """Bytes arriving in any chunking give the same messages."""
    stream = b"".join(m.encode() for m in messages)
    decoder = framing.FrontendDecoder()
    decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    out = []
    for i in range(0, len(stream), step):
        out.extend(m for m, _ in decoder.feed(stream[i : i + step]))
    assert out == messages
    assert decoder.buffered == 0


@PROPS
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_only_violation(data: bytes, startup: bool) -> None:
    """Random input decodes or raises ProtocolViolation; what decodes re-encodes to itself."""
    decoder = framing.FrontendDecoder(max_message=1 << 16)
    if not startup:
        decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    try:
        items = decoder.feed(data)
    except c.ProtocolViolation:
        return
    for message, raw in items:
        assert message.encode() == raw
    assert sum(len(raw) for _, raw in items) + decoder.buffered == len(data)


@PROPS
@given(frontend_messages, st.data())
def test_mutated_frames_never_misdecode(message: c.FrontendMessage, data: st.DataObject) -> None:
    """A flipped byte either fails, stays partial, or yields messages that re-encode exactly."""
    raw = bytearray(message.encode())
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    decoder = framing.FrontendDecoder(max_message=1 << 16)
    decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    try:
        items = decoder.feed(bytes(raw))
    except c.ProtocolViolation:
        return
    for decoded_message, chunk in items:
        assert decoded_message.encode() == chunk


@PROPS
@given(frontend_messages, st.data())
def test_truncated_stays_pending(message: c.FrontendMessage, data: st.DataObject) -> None:
    raw = message.encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    decoder = framing.FrontendDecoder()
    decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    assert decoder.feed(raw[:cut]) == []


@PROPS
@given(st.integers(0, 255), st.binary(max_size=120))
def test_backend_decoder_total(kind: int, body: bytes) -> None:
    with contextlib.suppress(c.ProtocolViolation):
        be.decode_backend(kind, body)


@PROPS
@given(st.binary(max_size=300), st.integers(1, 9))
def test_backend_framer_total(data: bytes, step: int) -> None:
    framer = framing.BackendFramer(max_message=1 << 12)
    total = 0
    try:
        for i in range(0, len(data), step):
            for _kind, body, raw in framer.feed(data[i : i + step]):
                assert raw[5:] == body
                assert struct.unpack("!i", raw[1:5])[0] == len(body) + 4
                total += len(raw)
    except c.ProtocolViolation:
        return
    assert total + len(framer.take_buffer()) == len(data)


@PROPS
@given(
    st.lists(st.tuples(st.sampled_from("SVCMDHPWF"), texts), max_size=6),
    st.booleans(),
)
def test_error_response_round_trip(fields: list[tuple[str, str]], notice: bool) -> None:
    message = be.ErrorResponse(tuple(fields), notice=notice)
    raw = message.encode()
    assert be.decode_backend(raw[0], raw[5:]) == message


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"Q\x00\x00\x00\x03", "length"),
        (b"Q\x00\x00\x00\x06\x00x", "after"),
        (b"Q\x00\x00\x00\x06ab", "terminator"),
        (b"Q\x00\x00\x00\x06\xff\x00", "UTF-8"),
        (b"S\x00\x00\x00\x05x", "after"),
        (b"S\x00\x01\x00\x00", "length"),
        (b"Z\x00\x00\x00\x04", "unknown"),
        (b"B\x00\x00\x00\x0a\x00\x00\x00\x00\xff\xff", "negative"),
        (b"D\x00\x00\x00\x06X\x00", "S or P"),
        (b"E\x00\x00\x00\x09\x00\xff\xff\xff\xff", "negative row"),
        (c.frame(b"p", b"x" * (c.MAX_PASSWORD_MESSAGE + 1)), "length"),
    ],
)
def test_violations(raw: bytes, why: str) -> None:
    with pytest.raises(c.ProtocolViolation, match=why):
        decoded(raw)


def test_oversized_frame_refused_before_body() -> None:
    decoder = framing.FrontendDecoder(max_message=1000)
    decoder.feed(c.StartupMessage(c.PROTOCOL_3_0, ()).encode())
    with pytest.raises(c.ProtocolViolation):
        decoder.feed(b"Q" + struct.pack("!i", 1001))


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("!ii", 7, c.PROTOCOL_3_0)[:7],
        struct.pack("!ii", 20000, c.PROTOCOL_3_0),
        struct.pack("!ii", 8, 2 << 16),
        struct.pack("!iii", 12, c.SSL_REQUEST_CODE, 0),
        struct.pack("!ii", 11, c.PROTOCOL_3_0) + b"ab\x00",
        c.StartupMessage(c.PROTOCOL_3_0, (("user", "a"), ("user", "b"))).encode(),
        struct.pack("!iii", 20, c.CANCEL_REQUEST_CODE, 1) + bytes(8),
    ],
)
def test_startup_violations(raw: bytes) -> None:
    try:
        items = decoded(raw, startup=True)
    except c.ProtocolViolation:
        return
    pytest.fail(f"accepted {items!r}")


def test_command_complete_rows() -> None:
    assert be.CommandComplete("SELECT 3").rows == 3
    assert be.CommandComplete("INSERT 0 2").rows == 2
    assert be.CommandComplete("BEGIN").rows is None


def test_command_complete_rows_only_counts_a_count_column_holds() -> None:
    """The tag comes from the target: ``isdigit`` holds for ``²``, which ``int`` refuses, and
    a count past 2**63 - 1 fits no count column (the audit event would not build)."""
    assert be.CommandComplete(f"SELECT {2**63 - 1}").rows == 2**63 - 1
    for tag in ("SELECT \u00b2", "SELECT \u0661", f"SELECT {2**63}", "SELECT " + "9" * 5000):
        assert be.CommandComplete(tag).rows is None, tag


@given(st.text(max_size=40))
def test_command_complete_rows_never_raises(tag: str) -> None:
    rows = be.CommandComplete(tag).rows
    assert rows is None or 0 <= rows <= 2**63 - 1


def test_a_batch_whose_rows_overflow_a_count_column_records_no_total() -> None:
    assert pg_audit._total([1, 2]) == 3
    assert pg_audit._total([]) is None
    assert pg_audit._total([2**63 - 1, 1]) is None  # the event still builds, without a total
