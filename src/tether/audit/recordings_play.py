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
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from tether.audit.recordings_read import Cast, CastEvent

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


def strip_ansi(text: str) -> str:
    """``text`` without escape sequences and control characters other than LF and TAB."""
    text = _ESCAPES.sub("", text)
    text = _CR_AT_LINE_START.sub("", _CR_BEFORE_LF.sub("\n", text))
    return _CONTROLS.sub("", text.replace("\r", "\n"))


def output_text(events: Iterable[CastEvent]) -> str:
    """The recorded output, concatenated (escapes kept)."""
    return "".join(event.data for event in events if event.code == "o")


def plain_text(cast: Cast) -> str:
    """The recording as plain text: its output with terminal control stripped.

    The output is stripped as a whole, not event by event, since an escape sequence may be
    split across two output events.
    """
    return strip_ansi(output_text(cast.events))


def cast_lines(cast: Cast) -> Iterable[str]:
    """The cast as uncompressed asciicast v2 lines (each ending in a newline)."""
    yield json.dumps(cast.header, ensure_ascii=False) + "\n"
    for event in cast.events:
        yield json.dumps([event.time, event.code, event.data], ensure_ascii=False) + "\n"


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
    cast: Cast,
    write: Callable[[str], Any],
    sleep: Callable[[float], Any],
    *,
    speed: float = 1.0,
    max_idle: float | None = None,
) -> float:
    """Write the output of ``cast`` with its timing; returns the total time slept."""
    slept = 0.0
    for pause, event in replay_delays(cast.events, speed=speed, max_idle=max_idle):
        if pause > 0:
            sleep(pause)
            slept += pause
        write(event.data)
    return slept
