"""Property tests of the wire formats, each read back by an independent parser."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.audit_export.receivers.http_receiver import hec_objects, signature_ok
from tests.audit_export.receivers.syslog_receiver import parse_message, read_frame
from tether.audit.events import KINDS, AuditEvent
from tether.audit.ocsf import to_ocsf
from tether.audit.sinks import rfc5424
from tether.audit.sinks.config import HecSinkConfig, SyslogSinkConfig
from tether.audit.sinks.hec import hec_body
from tether.audit.sinks.jsonl import ocsf_line
from tether.audit.sinks.syslog import SyslogSink
from tether.audit.sinks.webhook import sign, verify_signature, webhook_body

# Strings an agent controls: quotes, brackets, backslashes, newlines, non-ASCII, controls.
_NASTY = st.text(st.sampled_from(list('ab"]\\[= \n\r\t\x00é€😀-')) | st.characters(), max_size=30)
_OPT = st.none() | _NASTY.filter(bool)


@st.composite
def events(draw: st.DrawFn) -> AuditEvent:
    return AuditEvent(
        seq=draw(st.integers(1, 2**62)),
        kind=draw(st.sampled_from(sorted(KINDS))),
        time=draw(st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC))),
        agent=draw(_OPT),
        target=draw(_OPT),
        session_id=draw(_OPT),
        decision=draw(st.sampled_from([None, "allow", "deny", "error"])),
        action=draw(st.dictionaries(st.sampled_from(["command", "path", "method"]), _NASTY)),
    )


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


_SYSLOG = SyslogSink(
    SyslogSinkConfig(name="s", kind="syslog", host="h", transport="tcp", hostname="node-1")
)


@settings(max_examples=150)
@given(st.lists(events(), min_size=1, max_size=4))
def test_syslog_frames_parse_back_with_an_independent_parser(batch: list[AuditEvent]) -> None:
    stream = io.BytesIO(b"".join(rfc5424.frame(_SYSLOG.message(e)) for e in batch))
    for event in batch:
        frame = read_frame(stream)
        assert frame is not None
        parsed = parse_message(frame)
        assert parsed["msgid"] == event.kind and parsed["app"] == "tether"
        assert parsed["hostname"] == "node-1" and parsed["facility"] == 13
        sd = parsed["sd"]["tether@32473"]
        assert sd["seq"] == str(event.seq) and sd["id"] == event.id
        for param, value in (("agent", event.agent), ("session", event.session_id),
                             ("target", event.target), ("decision", event.decision)):  # fmt: skip
            _check_sd_value(sd.get(param), value)
        assert json.loads(parsed["msg"]) == _normal(to_ocsf(event))
        assert parsed["msg"].isascii()
        stamp = datetime.fromisoformat(parsed["timestamp"].replace("Z", "+00:00"))
        assert stamp == event.time
    assert read_frame(stream) is None


def _check_sd_value(parsed: str | None, value: str | None) -> None:
    """An SD value holds no control character (a newline would split the message for a
    receiver that reads lines), fits in 128 octets, and is the value itself when the
    value has neither controls nor more than 128 octets (else it was cut or escaped)."""
    if value is None:
        assert parsed is None
        return
    assert parsed is not None
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in parsed)
    assert len(parsed.encode()) <= 128 + 3  # unescaped: "..." may follow a cut
    plain = not any(
        ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" or 0xD800 <= ord(c) <= 0xDFFF
        for c in value
    )
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    if plain and len(escaped.encode()) <= 128:
        assert parsed == value


@settings(max_examples=100)
@given(
    st.text(st.sampled_from(list('ab"]\\\n\r\x00\x85\u2028é€😀')) | st.characters(), max_size=400)
)
@example("\ud800")  # a lone surrogate: no UTF-8 encodes it (it raised UnicodeEncodeError)
@example('a\udfff"')
def test_sd_values_are_escaped_and_bounded(value: str) -> None:
    escaped = rfc5424.escape_param_value(value)
    assert len(escaped.encode()) <= rfc5424.SD_VALUE_MAX_BYTES
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in escaped)
    # Read back by the independent receiver's SD parser: one value, nothing after it.
    parsed = parse_message(f'<1>1 - - - - - [x@1 v="{escaped}"]'.encode())
    _check_sd_value(parsed["sd"]["x@1"]["v"], value)


@given(st.text(), st.integers(1, 300))
def test_header_fields_are_printable_ascii_of_bounded_length(value: str, limit: int) -> None:
    field = rfc5424.header_field(value, limit)
    assert 1 <= len(field) <= limit
    assert all(33 <= ord(char) <= 126 for char in field)


@given(st.binary(min_size=1, max_size=200))
def test_octet_counting_frames_any_payload(payload: bytes) -> None:
    stream = io.BytesIO(rfc5424.frame(payload) * 2)
    assert read_frame(stream) == payload
    assert read_frame(stream) == payload
    assert read_frame(stream) is None


_SECRET = st.binary(min_size=1, max_size=64)


@given(_SECRET, st.binary(max_size=300), st.integers(1_000_000_000, 4_000_000_000))
def test_webhook_signatures_verify_both_ways(secret: bytes, body: bytes, stamp: int) -> None:
    header = sign(secret, stamp, body)
    assert verify_signature(secret, header, body, now=stamp + 10)
    assert not verify_signature(secret, header, body + b"x", now=stamp)
    assert not verify_signature(secret + b"x", header, body, now=stamp)
    assert not verify_signature(secret, header, body, now=stamp + 301)  # a replay, later
    assert not verify_signature(secret, header.replace("v1=", "v0="), body, now=stamp)


@given(_SECRET, st.binary(max_size=100))
def test_the_independent_receiver_agrees_with_sign(secret: bytes, body: bytes) -> None:
    import time

    now = int(time.time())
    assert signature_ok(sign(secret, now, body), body, secret)


@given(st.text(max_size=200), st.binary(max_size=50))
def test_any_signature_header_is_refused_without_raising(header: str, body: bytes) -> None:
    assert verify_signature(b"key", header, body, now=0) in (True, False)


_DIGITS = st.text(st.sampled_from(list("0123456789²³¹٣৫߂\U0001d7d7")), min_size=1, max_size=12)


@given(
    st.one_of(_DIGITS, _DIGITS.map(lambda digits: digits * 500)),
    st.text(st.sampled_from(list("0123456789abcdef²")), max_size=64),
)
def test_a_signature_header_with_any_digits_is_answered_not_raised(stamp: str, mac: str) -> None:
    """A receiver calls this on a header anyone can send: '²' (a digit to str.isdigit, not
    to int) and 5000 digits (past int's limit) used to raise ValueError."""
    header = f"t={stamp},v1={mac}"
    assert verify_signature(b"key", header, b"{}", now=1_800_000_000) is False


@settings(max_examples=50)
@given(st.lists(events(), min_size=1, max_size=5))
def test_hec_batches_and_webhook_arrays_hold_every_event_in_order(
    batch: list[AuditEvent],
) -> None:
    config = HecSinkConfig(name="h", kind="hec", url="https://splunk", token="t")  # type: ignore[arg-type]
    objects = hec_objects(hec_body(batch, config))
    assert [o["event"]["metadata"]["uid"] for o in objects] == [e.id for e in batch]
    assert [o["time"] for o in objects] == [round(e.time.timestamp(), 3) for e in batch]
    array = json.loads(webhook_body(batch))
    assert array == [_normal(to_ocsf(e)) for e in batch]
    for event in batch:
        line = ocsf_line(event)
        assert line.count(b"\n") == 1 and line.endswith(b"\n") and line.isascii()
        assert json.loads(line) == _normal(to_ocsf(event))


_SMALL_CONFIG = SyslogSinkConfig(
    name="s", kind="syslog", host="h", transport="tcp", hostname="n" * 255,
    app_name="a" * 48, sd_id="x" * 26 + "@32473", max_message_bytes=2048,
)  # fmt: skip
_SMALL = SyslogSink(_SMALL_CONFIG)
_BIG_TEXT = st.text(st.sampled_from(list('ab"\\\n\x00é😀')), min_size=0, max_size=5000)


@settings(max_examples=60)
@given(
    events(),
    st.dictionaries(st.sampled_from(["command", "path", "statement", "x", "y"]), _BIG_TEXT),
    st.lists(_BIG_TEXT, max_size=30),
)
def test_every_message_fits_its_limit_as_a_parseable_message_with_valid_json(
    event: AuditEvent, action: dict[str, str], chain: list[str]
) -> None:
    """Whatever the sizes an agent chose, the message is at most max_message_bytes, parses
    as RFC 5424, and its MSG is whole JSON naming the same event; one that fits is sent
    unchanged, one that does not is marked."""
    import dataclasses

    event = dataclasses.replace(event, action=action, actor_chain=tuple(chain), detail=action)
    message = _SMALL.message(event)
    assert len(message) <= 2048
    parsed = parse_message(message)
    ocsf = json.loads(parsed["msg"])
    assert ocsf["metadata"]["uid"] == event.id and ocsf["metadata"]["sequence"] == event.seq
    assert ocsf["class_uid"] == to_ocsf(event)["class_uid"]
    whole = rfc5424.ocsf_message(to_ocsf(event))
    sd = parsed["sd"]["x" * 26 + "@32473"]
    if ocsf["unmapped"]["tether"].get("truncated"):
        assert sd["truncated"] == "true"
        assert ocsf["unmapped"]["tether"]["original_bytes"] == len(whole)
    else:
        assert parsed["msg"] == whole and "truncated" not in sd
