"""Property tests of the recording formats: the cast reader, the escape stripper, replay timing."""

from __future__ import annotations

import gzip
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.audit.recordings import Recorder, RecordingError, RecordingMeta
from tether.audit.recordings_play import (
    SafeTerminal,
    TextStripper,
    output_text,
    replay_delays,
    safe_output,
    strip_ansi,
)
from tether.audit.recordings_read import (
    CastEvent,
    gunzip_prefix,
    parse_cast,
    parse_event,
    read_cast,
    stream_cast,
)

T0 = datetime(2026, 11, 29, tzinfo=UTC)
_PRINTABLE = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")))
_CSI = st.builds(
    lambda params, final: f"\x1b[{params}{final}",
    st.text("0123456789;?", max_size=8),
    st.sampled_from("ABCDHJKmhlsu"),
)
_OSC = st.builds(
    lambda body, end: f"\x1b]{body}{end}", _PRINTABLE, st.sampled_from(["\x07", "\x1b\\"])
)
_ESCAPE = st.one_of(_CSI, _OSC, st.sampled_from(["\x1b7", "\x1b8", "\x1b(B", "\x1bc", "\x9b2J"]))


@given(st.text())
def test_stripped_text_holds_no_terminal_control(text: str) -> None:
    stripped = strip_ansi(text)
    assert not any((ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F for c in stripped)
    assert strip_ansi(stripped) == stripped


@given(_PRINTABLE)
def test_plain_text_is_left_alone(text: str) -> None:
    assert strip_ansi(text) == text


@given(st.lists(st.one_of(_PRINTABLE, _ESCAPE)))
def test_escape_sequences_vanish_and_the_text_around_them_stays(parts: list[str]) -> None:
    plain = "".join(p for p in parts if not p.startswith(("\x1b", "\x9b")))
    assert strip_ansi("".join(parts)) == plain


@given(st.binary())
def test_any_bytes_parse_to_a_cast_or_a_recording_error(data: bytes) -> None:
    try:
        cast = parse_cast(data)
    except RecordingError:
        return
    assert cast.header["version"] == 2


@given(st.binary(max_size=200))
def test_any_line_is_an_event_or_none(line: bytes) -> None:
    event = parse_event(line)
    assert event is None or (event.code in "oirm" and event.time >= 0)


@given(st.binary(max_size=300))
def test_gunzip_prefix_never_raises(data: bytes) -> None:
    out, ended = gunzip_prefix(data)
    assert isinstance(out, bytes) and isinstance(ended, bool)


_CHUNKS = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=30)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=_CHUNKS, cut=st.floats(0, 1))
def test_a_cast_cut_anywhere_reads_as_a_prefix(chunks: list[bytes], cut: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        recorder = Recorder.start("p", RecordingMeta(), root=Path(tmp), now=T0)
        for chunk in chunks:
            recorder.output(chunk)
        recorder.close()
        data = recorder.cast_path.read_bytes()
        full = read_cast(recorder.cast_path)
        assert full.complete
        assert output_text(full.events) == b"".join(chunks).decode("utf-8", "replace")
        cut_path = recorder.cast_path.with_name("cut.cast.gz")
        cut_path.write_bytes(data[: int(len(data) * cut)])
        try:
            partial = read_cast(cut_path)
        except RecordingError:
            return  # cut inside the header: nothing to show
        assert partial.events == full.events[: len(partial.events)]
        assert partial.complete == (cut == 1)


@given(
    st.lists(
        st.tuples(st.floats(0, 1e5, allow_nan=False), st.sampled_from("oirm")),
        max_size=30,
    ),
    st.floats(0.01, 100),
    st.one_of(st.none(), st.floats(0, 10)),
)
def test_replay_pauses_are_gaps_capped_and_scaled(
    steps: list[tuple[float, str]], speed: float, max_idle: float | None
) -> None:
    events, now = [], 0.0
    for gap, code in steps:
        now += gap
        events.append(CastEvent(now, code, "x"))
    delays = list(replay_delays(events, speed=speed, max_idle=max_idle))
    assert [e for _, e in delays] == [e for e in events if e.code == "o"]
    assert all(d >= 0 for d, _ in delays)
    if max_idle is not None:
        assert all(d <= max_idle / speed + 1e-9 for d, _ in delays)
    if max_idle is None and delays:
        assert sum(d for d, _ in delays) == pytest.approx(delays[-1][1].time / speed, rel=1e-6)


# --- replay through SafeTerminal ---------------------------------------------------------

_HOSTILE = st.sampled_from(
    [
        "\x1b]52;c;cm0gLXJmIH4K\x07", "\x1b]0;owned\x1b\\", "\x1b]8;;https://evil/\x07",
        "\x1b]4;1;?\x07", "\x1bP$qm\x1b\\", "\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\",
        "\x1b_apc\x1b\\", "\x1b^pm\x1b\\", "\x1bXsos\x1b\\", "\x9d0;t\x9c", "\x9b6n",
        "\x1b[6n", "\x1b[c", "\x1b[>c", "\x1b[21t", "\x1b[?1000h", "\x1b[?2004h", "\x1bc",
        "\x1b[>4;1m", "\x05", "\x07", "\x90q\x9c", "\x1b[999999999b",
    ]
)  # fmt: skip
_DRAWING = st.sampled_from(
    ["\x1b[1;31m", "\x1b[0m", "\x1b[2J", "\x1b[H", "\x1b[10;5H", "\x1b[K", "\x1b[?25l",
     "\x1b[?1049h", "\x1b7", "\x1b8", "\x1b(B", "\n", "\r", "\t", "\b"]
)  # fmt: skip
# Anything the terminal could take as the start of an escape, or a control it acts on.
_NOT_DRAWING = re.compile(
    r"\x1b(?!\[[0-9;:]*[@A-MPSTXZ`ad-gmr]|\[\?(?:7|25|47|104[789])[hl]|[78DEM=>]|[()*+].)"
    r"|[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f]"
)


def _pieces(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(cut, len(text)) for cut in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@settings(max_examples=300)
@given(
    st.lists(st.one_of(_PRINTABLE, _HOSTILE, _DRAWING, st.text(max_size=5)), max_size=12),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_replay_never_writes_a_sequence_that_reaches_beyond_the_screen(
    parts: list[str], cuts: list[int]
) -> None:
    """Whatever the agent printed, and however it fell into output events, the replayed
    output holds only drawing sequences and the controls BS, TAB, LF, CR: never an OSC,
    DCS, APC, a request the terminal answers, a mode change or a C1 control."""
    text = "".join(parts)
    screen = SafeTerminal()
    written = "".join(screen.feed(piece) for piece in _pieces(text, cuts))
    assert _NOT_DRAWING.search(written) is None, repr(written)
    assert written == safe_output(text)  # a split changes nothing


@given(st.lists(st.one_of(_PRINTABLE, _DRAWING), max_size=12))
def test_replay_keeps_text_and_drawing_as_they_are(parts: list[str]) -> None:
    text = "".join(parts)
    assert safe_output(text) == text


@given(st.lists(st.one_of(_PRINTABLE, _HOSTILE), max_size=12))
def test_hostile_sequences_vanish_and_the_text_around_them_stays(parts: list[str]) -> None:
    plain = "".join(p for p in parts if p in ("",) or not _HOSTILE_START.match(p))
    assert safe_output("".join(parts)) == plain


_HOSTILE_START = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# --- streams: a cast read as it goes, text stripped as it goes --------------------------------

_STREAM_ALPHABET = st.sampled_from([
    "a", "b", " ", "\n", "\r", "\t", "\x1b", "[", "]", "P", "(", "0", "1", ";", "?", "m", "\x07",
    "\\", "\x9b", "\x9d", "\x90", "\x9c", "\x85", "\x00", "\x7f", "é",
])  # fmt: skip


@given(st.lists(_STREAM_ALPHABET, max_size=60).map("".join), st.lists(st.integers(0, 60)))
def test_text_stripped_in_any_pieces_is_the_whole_stripped(text: str, cuts: list[int]) -> None:
    stripper = TextStripper()
    points = sorted({min(cut, len(text)) for cut in cuts})
    pieces, start = [], 0
    for point in [*points, len(text)]:
        pieces.append(stripper.feed(text[start:point]))
        start = point
    pieces.append(stripper.flush())
    assert "".join(pieces) == strip_ansi(text)


@given(
    st.sampled_from(["\x1b[", "\x9b", "\x1b]", "\x9d", "\x1bP", "\x1b"]),
    st.text("0123456789;? !/\x1b", max_size=12),
    st.integers(1, 4),
    st.sampled_from(["", "m", "\x07", "\x1b\\", "\x9c", "x\n"]),
)
def test_a_long_unfinished_sequence_is_held_in_constant_memory(
    start: str, body: str, repeat: int, end: str
) -> None:
    # longer than the hold cap: shortened while held, the output unchanged
    text = "a" + start + body * (3000 * repeat) + end + "tail\n"
    stripper = TextStripper()
    pieces = [stripper.feed(text[i : i + 1000]) for i in range(0, len(text), 1000)]
    assert len(stripper._escape) <= 4096  # the bound under test
    assert "".join([*pieces, stripper.flush()]) == strip_ansi(text)


@given(
    st.lists(st.one_of(st.just(b""), st.just(b"not json"), st.binary(max_size=30),
                       st.builds(lambda t, d: f'[{t}, "o", {d!r}]'.replace("'", '"').encode(),
                                 st.integers(0, 9), st.text("ab\\x", max_size=20))),
             max_size=12),
    st.booleans(),
    st.floats(0, 1),
    st.sampled_from([b"", b"\n"]),
)  # fmt: skip
def test_a_cast_read_as_a_stream_is_the_cast_read_whole(
    lines: list[bytes], gzipped: bool, cut: float, end: bytes
) -> None:
    header = b'{"version": 2, "width": 80, "height": 24}'
    text = b"\n".join([header, *lines]) + end
    data = gzip.compress(text) if gzipped else text
    data = data[: max(1, int(len(data) * cut))] if cut < 1 else data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("s.cast.gz" if gzipped else "s.cast")
        path.write_bytes(data)
        if gzipped:
            whole, ended = gunzip_prefix(data)
        else:
            whole, ended = data, True
        try:
            expected = parse_cast(whole, clean_end=ended)
            if gzipped and not whole:
                raise RecordingError("no readable data")
        except RecordingError:
            with pytest.raises(RecordingError):
                list(stream_cast(path))
            return
        stream = stream_cast(path)
        assert stream.header == expected.header
        assert list(stream) == expected.events
        assert stream.complete == expected.complete
