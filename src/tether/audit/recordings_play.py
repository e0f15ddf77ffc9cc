"""Playing recordings back: replay with timing, export as ``.cast`` and as plain text.

Replay writes the recorded output (``"o"`` events only) with the recorded pauses, divided by
``speed`` and each capped at ``max_idle`` seconds, through an injected ``write`` and
``sleep`` so that tests need no real time.

Plain text is the output with terminal control stripped: escape sequences (CSI, OSC, DCS and
the other string controls, two-byte escapes, their 8-bit C1 forms) and C0 controls other
than newline and tab. ``CR LF`` becomes ``LF``, a ``CR`` at the start of a line is dropped,
and any other ``CR`` (a progress bar redrawing its line) becomes a newline: a terminal would
overwrite the line, but the text keeps what was overwritten, since a recording is evidence
and a carriage return is a classic way to hide output from whoever only looks at the screen. (The
``.cast`` export keeps every byte as recorded.) Stripping matters for security too: a
recording is output an agent controlled, and raw escape sequences replayed into an
investigator's terminal can retitle it, rewrite the screen or, on some terminals, answer
back. ``export --format text`` is the safe way to look at an untrusted recording.

Replay therefore passes the output through :class:`SafeTerminal` unless asked for the raw
bytes: what only draws (text, SGR colours, cursor movement, erasing, scrolling, the
alternate screen, charset selection) goes through; everything that reaches beyond the
screen is dropped: OSC (window title, clipboard writes with OSC 52, hyperlinks, palette
queries), DCS, APC, PM and SOS strings (DECRQSS and other requests that answer back, tmux
passthrough), the CSI requests that make the terminal answer as if typed (``CSI 6n``,
``CSI c``, ``CSI 21t``) or change its modes (mouse reporting, bracketed paste), a full
reset, 8-bit C1 controls, and C0 controls other than BS, TAB, LF and CR. A sequence split
across two output events is held until it is whole, so a split cannot smuggle one through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Protocol

from tether.audit.recordings_read import CastEvent


class CastLike(Protocol):
    """A cast read whole (:class:`~tether.audit.recordings_read.Cast`) or as a stream
    (:class:`~tether.audit.recordings_read.CastStream`)."""

    @property
    def header(self) -> dict[str, Any]: ...

    @property
    def events(self) -> Iterable[CastEvent]: ...


# ESC or the 8-bit C1 introducers, followed by what each kind of sequence takes.
_ESCAPES: Final = re.compile(
    r"""
    (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?      # CSI ... final
  | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]) .*? (?:\x07|\x1b\\|\x9c|\Z)   # OSC/DCS/SOS/PM/APC
  | \x1b [\x20-\x2f]* [\x30-\x7e]?                             # two-byte and nF escapes
  | [\x80-\x9f]                                                # any other C1 control
    """,
    re.VERBOSE | re.DOTALL,
)
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CR_BEFORE_LF: Final = re.compile(r"\r+\n")
_CR_AT_LINE_START: Final = re.compile(r"(?:^|(?<=\n))\r+")


# One terminal control at a time, or a run of text without any.
_TOKEN: Final = re.compile(
    r"""
    (?P<csi> (?:\x1b\[|\x9b)
             (?P<params>[\x30-\x3f]*) (?P<inter>[\x20-\x2f]*) (?P<final>[\x40-\x7e]) )
  | (?P<string> (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])     # OSC DCS SOS PM APC ... ST/BEL
                (?:[^\x07\x1b\x9c]|\x1b(?!\\))* (?:\x07|\x1b\\|\x9c) )
  | (?P<esc> \x1b (?:[\x20-\x2f]+[\x30-\x7e] | [\x30-\x4f\x51-\x57\x59\x5a\x5c\x60-\x7e]) )
  | (?P<partial>
        (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* \Z
      | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]) (?:[^\x07\x1b\x9c]|\x1b(?!\\))* \x1b? \Z
      | \x1b [\x20-\x2f]* \Z )
  | (?P<control> [\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f] )
  | (?P<text> [^\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f]+ )
    """,
    re.VERBOSE | re.DOTALL,
)
# CSI finals that only move the cursor, erase, insert, delete, scroll or set colours; each
# bounded by the screen (not REP, ``CSI n b``: it repeats a character n times, n = 10^9).
_DRAWING_CSI: Final = frozenset("@ABCDEFGHIJKLMPSTXZ`adefgmr")
# DEC private modes that only change what is drawn: autowrap, cursor shown, alternate screen.
_DRAWING_MODES: Final = frozenset({"7", "25", "47", "1047", "1048", "1049"})
_DRAWING_ESC: Final = frozenset({"\x1b7", "\x1b8", "\x1bD", "\x1bE", "\x1bM", "\x1b=", "\x1b>"})
_MAX_HELD: Final = 4096  # an unfinished sequence longer than this is dropped, not held


class SafeTerminal:
    """Filters terminal output down to what only draws on the screen (module docstring).

    Feed it the output in the pieces it was recorded in; an escape sequence cut at the end
    of a piece is held and completed by the next one (and dropped if it never is).
    """

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        text, self._held = self._held + text, ""
        out: list[str] = []
        for match in _TOKEN.finditer(text):
            kind = match.lastgroup
            if kind == "text":
                out.append(match.group())
            elif kind == "csi":
                out.append(_drawing_csi(match))
            elif kind == "esc":
                sequence = match.group()
                if sequence in _DRAWING_ESC or (len(sequence) == 3 and sequence[1] in "()*+"):
                    out.append(sequence)
            elif kind == "partial":
                held = match.group()
                self._held = held if len(held) <= _MAX_HELD else ""
            elif kind == "control" and match.group() in "\b\t\n\r":
                out.append(match.group())
        return "".join(out)


def _drawing_csi(match: re.Match[str]) -> str:
    params, inter, final = match.group("params"), match.group("inter"), match.group("final")
    if inter:
        return ""
    if final in _DRAWING_CSI and all(char in "0123456789;:" for char in params):
        return f"\x1b[{params}{final}"
    if final in "hl" and params.startswith("?") and set(params[1:].split(";")) <= _DRAWING_MODES:
        return f"\x1b[{params}{final}"
    return ""


def safe_output(text: str) -> str:
    """``text`` (whole) through a :class:`SafeTerminal`."""
    return SafeTerminal().feed(text)


def strip_ansi(text: str) -> str:
    """``text`` without escape sequences and control characters other than LF and TAB."""
    text = _ESCAPES.sub("", text)
    text = _CR_AT_LINE_START.sub("", _CR_BEFORE_LF.sub("\n", text))
    return _CONTROLS.sub("", text.replace("\r", "\n"))


_HOLD_CAP: Final = 4096  # a held unfinished escape is shortened past this (see TextStripper)
_STRING_INTRODUCERS: Final = frozenset("]PX^_")


class TextStripper:
    """:func:`strip_ansi` over a stream: ``feed`` the text in pieces, then ``flush``; the
    output, joined, is ``strip_ansi`` of the whole text, in constant memory.

    What could change with the next piece is held back: an escape sequence that reaches the
    end of a piece (shortened to its introducer and last character past ``_HOLD_CAP``: the
    whole sequence is removed anyway, and those two decide how it goes on), and a run of
    ``CR`` at the end (``CR LF`` is ``LF``). Whether the next piece starts a line is kept.
    """

    def __init__(self) -> None:
        self._escape = ""  # an escape sequence that may go on
        self._cr = 0  # CRs at the end of the escape-free text, held
        self._line_start = True  # the escape-free text so far ends a line (or is empty)

    def feed(self, text: str) -> str:
        text = self._escape + text
        self._escape = ""
        last = _last_escape(text)
        if last is not None and last.end() == len(text):
            self._escape = _held(text[last.start() :])
            text = text[: last.start()]
        return self._lines(_ESCAPES.sub("", text), final=False)

    def flush(self) -> str:
        """The end of the text: what was held, stripped."""
        text, self._escape = _ESCAPES.sub("", self._escape), ""
        return self._lines(text, final=True)

    def _lines(self, text: str, *, final: bool) -> str:
        text = "\r" * self._cr + text
        self._cr = 0
        if not final:
            kept = text.rstrip("\r")
            self._cr = len(text) - len(kept)
            text = kept
        if not text:
            return ""
        # The CR rules of strip_ansi, with the line start carried over from the last piece.
        text = _CR_AT_LINE_START.sub(
            "", ("\n" if self._line_start else "x") + _CR_BEFORE_LF.sub("\n", text)
        )[1:]
        self._line_start = text.endswith("\n") if text else self._line_start
        return _CONTROLS.sub("", text.replace("\r", "\n"))


def _last_escape(text: str) -> re.Match[str] | None:
    last = None
    for match in _ESCAPES.finditer(text):
        last = match
    return last


def _held(sequence: str) -> str:
    """An unfinished escape sequence, shortened when long: its introducer and last
    character (ESC ``\\`` may end a string, so a string keeps a last ESC only)."""
    if len(sequence) <= _HOLD_CAP:
        return sequence
    first = sequence[0]
    if (first == "\x1b" and sequence[1] in _STRING_INTRODUCERS) or first in "\x90\x98\x9d\x9e\x9f":
        size = 2 if first == "\x1b" else 1
        return sequence[:size] + ("\x1b" if sequence[-1] == "\x1b" else "")
    size = 2 if first == "\x1b" and sequence[1] == "[" else 1
    return sequence[:size] + sequence[-1]


def output_text(events: Iterable[CastEvent]) -> str:
    """The recorded output, concatenated (escapes kept)."""
    return "".join(event.data for event in events if event.code == "o")


def plain_text(cast: CastLike) -> str:
    """The recording as plain text: its output with terminal control stripped.

    The output is stripped as a whole, not event by event, since an escape sequence may be
    split across two output events.
    """
    return strip_ansi(output_text(cast.events))


def plain_text_pieces(cast: CastLike) -> Iterator[str]:
    """:func:`plain_text` as it is read, in pieces (constant memory: a :class:`TextStripper`
    carries what an escape sequence split across events needs)."""
    stripper = TextStripper()
    for event in cast.events:
        if event.code == "o" and (piece := stripper.feed(event.data)):
            yield piece
    if last := stripper.flush():
        yield last


# JSON escapes C0 controls but writes DEL and the C1 controls as they are; written to a
# terminal, U+009B and U+009D would start a CSI or an OSC. They are escaped too.
_JSON_RAW_CONTROLS: Final = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}


def cast_lines(cast: CastLike) -> Iterable[str]:
    """The cast as uncompressed asciicast v2 lines (each ending in a newline); every
    control character is a JSON escape, so the lines are safe to print."""
    yield json.dumps(cast.header, ensure_ascii=False).translate(_JSON_RAW_CONTROLS) + "\n"
    for event in cast.events:
        line = json.dumps([event.time, event.code, event.data], ensure_ascii=False)
        yield line.translate(_JSON_RAW_CONTROLS) + "\n"


def replay_delays(
    events: Iterable[CastEvent], *, speed: float = 1.0, max_idle: float | None = None
) -> Iterable[tuple[float, CastEvent]]:
    """Each output event with the pause to make before it, adjusted for speed and idle cap."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    previous = 0.0  # the time of the last output written: input and resizes show nothing
    for event in events:
        if event.code != "o":
            continue
        pause = max(0.0, event.time - previous)
        previous = max(previous, event.time)
        if max_idle is not None:
            pause = min(pause, max_idle)
        yield pause / speed, event


def replay(
    cast: CastLike,
    write: Callable[[str], Any],
    sleep: Callable[[float], Any],
    *,
    speed: float = 1.0,
    max_idle: float | None = None,
    raw: bool = False,
) -> float:
    """Write the output of ``cast`` with its timing; returns the total time slept. The
    output goes through a :class:`SafeTerminal` unless ``raw``."""
    slept = 0.0
    screen = None if raw else SafeTerminal()
    for pause, event in replay_delays(cast.events, speed=speed, max_idle=max_idle):
        if pause > 0:
            sleep(pause)
            slept += pause
        data = event.data if screen is None else screen.feed(event.data)
        if data:
            write(data)
    return slept
