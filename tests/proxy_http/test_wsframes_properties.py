"""The WebSocket frame reader and masker (tether.proxy.http.wsframes): for any valid stream
of server frames and any chunking, the output is the same, as long as the input, every
header unchanged, and no form of the secret left in any payload (split across fragments,
reads, with control frames between fragments); for any bytes, only FrameError."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.proxy.http.scrub import Masker, masker_for
from tether.proxy.http.wsframes import (
    MAX_WAITING,
    Control,
    Event,
    FrameError,
    FrameMasker,
    FrameParser,
    Head,
    MessageEnd,
    Payload,
)

_SECRET = st.binary(min_size=1, max_size=10).map(lambda b: bytes(b"ab*%/"[x % 5] for x in b))
_SECRETS = st.lists(_SECRET, min_size=1, max_size=3)
SECRET = b"ws-secret-0123456789"


def frame(opcode: int, payload: bytes, *, fin: bool = True, width: int = 0, rsv: int = 0) -> bytes:
    """One server frame; ``width`` 0 picks the minimal length encoding, 2 or 8 forces one."""
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if width == 8 or (width == 0 and size > 0xFFFF):
        head += bytes([127]) + size.to_bytes(8, "big")
    elif width == 2 or (width == 0 and size > 125):
        head += bytes([126]) + size.to_bytes(2, "big")
    else:
        head += bytes([size])
    return head + payload


@dataclass
class Parsed:
    """A whole stream read at once: every frame's header bytes and payload."""

    frames: list[tuple[bytes, int, bool, bytes]]  # (header, opcode, fin, payload)


def parse(stream: bytes) -> Parsed:
    """A plain reference reader of a valid server stream (no mask, no extension)."""
    frames, pos = [], 0
    while pos < len(stream):
        first, second = stream[pos], stream[pos + 1]
        size, at = second & 0x7F, pos + 2
        if size == 126:
            size, at = int.from_bytes(stream[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(stream[at : at + 8], "big"), at + 8
        frames.append((stream[pos:at], first & 0x0F, bool(first & 0x80), stream[at : at + size]))
        pos = at + size
    assert pos == len(stream)
    return Parsed(frames)


def messages(parsed: Parsed) -> tuple[list[bytes], list[bytes]]:
    """(each message's payload, each control frame's payload)."""
    done, controls, current = [], [], b""
    for _, opcode, fin, payload in parsed.frames:
        if opcode >= 8:
            controls.append(payload)
            continue
        current += payload
        if fin:
            done.append(current)
            current = b""
    return done, controls


@st.composite
def _payloads(draw: st.DrawFn, masker: Masker, max_parts: int = 10) -> bytes:
    parts = st.one_of(st.binary(max_size=8).map(lambda b: bytes(b"ab*%/x"[x % 6] for x in b)),
                      st.sampled_from(masker.needles),
                      st.sampled_from(masker.needles).map(lambda n: n[: len(n) // 2]),
                      st.sampled_from(masker.needles).map(lambda n: n[len(n) // 2 :]))  # fmt: skip
    return b"".join(draw(st.lists(parts, max_size=max_parts)))


@st.composite
def _streams(draw: st.DrawFn) -> tuple[Masker, bytes, list[int]]:
    """A valid stream: messages cut into fragments (control frames between them) and
    control frames between messages; any length encoding; and where to cut it in reads."""
    masker = masker_for(draw(_SECRETS))
    assert masker is not None
    out = []
    widths = st.sampled_from([0, 0, 2, 8])

    def control() -> bytes:
        payload = draw(_payloads(masker, 6))[:125]
        return frame(draw(st.sampled_from([0x8, 0x9, 0xA])), payload)

    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            out.append(control())
            continue
        body = draw(_payloads(masker))
        if draw(st.integers(0, 9)) == 0:
            body += bytes(200)  # a 16-bit length
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        for index, piece in enumerate(pieces):
            opcode = draw(st.sampled_from([0x1, 0x2])) if index == 0 else 0x0
            last = index == len(pieces) - 1
            out.append(frame(opcode, piece, fin=last, width=draw(widths)))
            if not last and draw(st.integers(0, 3)) == 0:
                out.append(control())
    stream = b"".join(out)
    reads = draw(st.lists(st.integers(0, len(stream)), max_size=10))
    return masker, stream, reads


def chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def masked(masker: Masker, reads: list[bytes]) -> tuple[bytes, int]:
    frames = FrameMasker(masker)
    return b"".join(frames.feed(r) for r in reads), frames.count


@settings(max_examples=700, deadline=None)
@given(_streams())
def test_any_chunking_masks_every_payload(case: tuple[Masker, bytes, list[int]]) -> None:
    masker, stream, cuts = case
    out, count = masked(masker, chunks(stream, cuts))
    assert (out, count) == masked(masker, [stream])  # any chunking: the output of one pass
    assert len(out) == len(stream)
    sent, shown = parse(stream), parse(out)
    assert [f[:3] for f in shown.frames] == [f[:3] for f in sent.frames]  # headers unchanged
    bodies, controls = messages(sent)
    seen_bodies, seen_controls = messages(shown)
    assert seen_bodies == [masker.whole(b) for b in bodies]  # a message masked as one body
    assert seen_controls == [masker.whole(c) for c in controls]
    for payload in seen_bodies + seen_controls:
        assert not any(needle in payload for needle in masker.needles)
    found = sum(len(masker.pattern.findall(p)) for p in bodies + controls)
    assert count == found


@settings(max_examples=400, deadline=None)
@given(_streams())
def test_the_parser_gives_the_same_events_for_any_chunking(
    case: tuple[Masker, bytes, list[int]],
) -> None:
    _, stream, cuts = case
    whole = FrameParser().feed(stream)
    parser = FrameParser()
    pieces: list[Event] = []
    for read in chunks(stream, cuts):
        for event in parser.feed(read):
            if isinstance(event, Payload) and pieces and isinstance(pieces[-1], Payload):
                pieces[-1] = Payload(pieces[-1].data + event.data)
            else:
                pieces.append(event)
    assert pieces == whole  # one pass gives each frame's payload in one piece
    told = [e.data for e in whole if isinstance(e, Head | Payload)]
    told += [e.head.data + e.payload for e in whole if isinstance(e, Control)]
    assert sum(map(len, told)) == len(stream)


def _corrupt() -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        _, stream, _ = draw(_streams())
        data = bytearray(stream)
        for _ in range(draw(st.integers(0, 3))):
            if data:
                at = draw(st.integers(0, len(data) - 1))
                data[at] = draw(st.integers(0, 255))
        return bytes(data)

    return st.one_of(st.binary(max_size=300), build())


@settings(max_examples=700, deadline=None)
@given(_corrupt(), st.lists(st.integers(0, 400), max_size=10))
def test_any_bytes_raise_only_frame_error(data: bytes, cuts: list[int]) -> None:
    masker = masker_for([SECRET])
    assert masker is not None
    for reads in (chunks(data, [c for c in cuts if c <= len(data)]), [data]):
        parser, frames = FrameParser(), FrameMasker(masker)
        with contextlib.suppress(FrameError):
            for read in reads:
                parser.feed(read)
        with contextlib.suppress(FrameError):
            for read in reads:
                frames.feed(read)


# --- examples ------------------------------------------------------------------------------


def _masker() -> Masker:
    masker = masker_for([SECRET])
    assert masker is not None
    return masker


def test_a_secret_split_across_fragments_reads_and_a_ping_between() -> None:
    masker = _masker()
    stream = (frame(0x1, b"token=ws-secret-01", fin=False) + frame(0x9, b"ping " + SECRET)
              + frame(0x0, b"23456789 end") + frame(0x8, b"\x03\xe8bye " + SECRET))  # fmt: skip
    out, count = masked(masker, [stream[i : i + 1] for i in range(len(stream))])
    assert count == 3 and len(out) == len(stream)
    star = b"*" * len(SECRET)
    assert out == (frame(0x1, b"token=" + star[:12], fin=False)
                   + frame(0x9, b"ping " + star) + frame(0x0, star[12:] + b" end")
                   + frame(0x8, b"\x03\xe8bye " + star))  # fmt: skip


def test_nothing_is_held_past_a_message_end() -> None:
    frames = FrameMasker(_masker())
    message = frame(0x1, b"ends like ws-secret")  # could begin the secret: still all sent
    assert frames.feed(message) == message
    held = frame(0x1, b"ends like ws-secret", fin=False)
    out = frames.feed(held)
    assert out == held[: -len(b"ws-secret")]  # a fragment's end waits for the next one
    ping = frame(0x9, b"?")
    assert frames.feed(ping) == b""  # behind it, in order
    last = frame(0x0, b"-0", fin=True)
    assert frames.feed(last) == b"ws-secret" + ping + last


def test_a_large_frame_streams_in_constant_memory() -> None:
    frames = FrameMasker(_masker())
    size = 1 << 40  # never materialized: a frame header, then pieces as they come
    assert frames.feed(frame(0x2, b"", width=8)[:2] + size.to_bytes(8, "big")) != b""
    piece = b"x" * 65536
    for _ in range(64):
        assert frames.feed(piece) == piece


def test_frames_piling_up_behind_a_held_fragment_fail() -> None:
    frames = FrameMasker(_masker())
    frames.feed(frame(0x1, b"ws-secret", fin=False))
    ping = frame(0x9, b"p" * 125)
    with pytest.raises(FrameError, match="held fragment"):
        for _ in range(MAX_WAITING // len(ping) + 1):
            frames.feed(ping)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(0x1, b"x", rsv=0x40), "RSV"),
        (frame(0x1, b"x", rsv=0x20), "RSV"),
        (frame(0x1, b"x", rsv=0x10), "RSV"),
        (bytes([0x81, 0x81]) + b"abcd" + b"x", "masked"),
        *((bytes([0x80 | op, 0]), "unknown opcode") for op in (3, 4, 5, 6, 7, 0xB, 0xF)),
        (frame(0x9, b"x", fin=False), "fragmented"),
        (bytes([0x89, 126, 0, 126]) + bytes(126), "longer than 125"),
        (bytes([0x82, 127]) + (1 << 63).to_bytes(8, "big"), "top bit"),
        (frame(0x0, b"x"), "continuation frame outside"),
        (frame(0x1, b"x", fin=False) + frame(0x2, b"y"), "new message"),
    ],
)
def test_what_cannot_be_scanned_fails(data: bytes, reason: str) -> None:
    parser = FrameParser()
    with pytest.raises(FrameError, match=reason):
        for byte in range(len(data)):
            parser.feed(data[byte : byte + 1])
    with pytest.raises(FrameError, match=reason):
        parser.feed(frame(0x1, b"fine"))  # a failed stream stays failed
    with pytest.raises(FrameError, match=reason):
        FrameMasker(_masker()).feed(data)


def test_events_of_a_stream() -> None:
    stream = frame(0x1, b"ab", fin=False) + frame(0xA, b"") + frame(0x0, b"", fin=True)
    assert FrameParser().feed(stream) == [
        Head(b"\x01\x02", False, 0x1, 2), Payload(b"ab"),
        Control(Head(b"\x8a\x00", True, 0xA, 0), b""),
        Head(b"\x80\x00", True, 0x0, 0), MessageEnd(),
    ]  # fmt: skip
