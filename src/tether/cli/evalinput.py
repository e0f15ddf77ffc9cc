"""The input of ``tether policy eval``: one JSON request, or JSON Lines.

The input is read as a stream. When its first non-blank line is a whole JSON value, the input
is JSON Lines and each line is decided as soon as it is read (so eval works as a co-process).
Otherwise the whole input is read and parsed as one JSON value (a pretty-printed request); if
that fails too, it is JSON Lines after all and every line is answered on its own.
Blank lines are skipped: they are neither requests nor answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tether.jsoninput import JsonInputError, parse_json

_BOM = b"\xef\xbb\xbf"

# Each item is a parsed request, or the error that says why its line is not one.
Item = Any | JsonInputError


def read_requests(lines: Iterable[bytes]) -> Iterator[Item]:
    """The requests of the input given as lines of bytes, in order."""
    stream = iter(lines)
    head: list[bytes] = []
    for line in stream:
        head.append(line)
        if line.strip():
            break
    if not head or not head[-1].strip():
        return
    head[0] = head[0].removeprefix(_BOM)
    first = _parse_line(head[-1], len(head))
    if not isinstance(first, JsonInputError):
        yield first
        yield from _json_lines(stream, start=len(head) + 1)
        return
    rest = head + list(stream)
    try:
        yield parse_json(b"".join(rest))
    except JsonInputError:
        yield from _json_lines(rest, start=1)


def _json_lines(lines: Iterable[bytes], start: int) -> Iterator[Item]:
    for number, line in enumerate(lines, start=start):
        if line.strip():
            yield _parse_line(line, number)


def _parse_line(line: bytes, number: int) -> Item:
    try:
        return parse_json(line)
    except JsonInputError as error:
        return error.on_line(number)
