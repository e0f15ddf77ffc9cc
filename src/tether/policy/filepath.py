"""Canonical form of file paths (spec 5.5), and the Unicode rules shared with HTTP paths.

A file operation reaches the policy with a path the SFTP server will hand to the target's
file system. Globs over that path are only meaningful if the path names exactly one file the
same way the target resolves it, so anything the target could read differently is denied as
``ambiguous-path`` (:class:`~tether.policy.errors.AmbiguousPath`) instead of being guessed at.

``canonical_file_path`` accepts a path only when it is already canonical and returns it
unchanged; it never repairs one (a repaired path is a path the policy did not see). Denied:

* a path that is not absolute (does not start with ``/``); the empty path;
* an empty segment: ``//`` anywhere, **and a trailing** ``/`` on anything but the root ``/``.
  The spec is silent on the trailing slash for files; ``/etc/`` and ``/etc`` name the same
  directory, so accepting both would give one file two spellings. Deny (safe choice);
* a ``.`` or ``..`` segment, and (spec silent) any segment made only of dots (``...``), which
  some servers and platforms treat as a relative reference;
* NUL, C0 control characters, DEL and C1 control characters;
* (spec silent) a backslash: a plain character on POSIX, a separator on Windows-hosted SFTP
  servers, so ``/srv\\..\\etc`` would mean different things to the policy and the target;
* (spec silent) lone surrogates, which is how Python spells file names that were not valid
  UTF-8 (``surrogateescape``): such a name has no stable text form for a glob to match;
* (spec silent) a path longer than :data:`MAX_FILE_PATH` characters (``PATH_MAX`` on Linux).

Non-ASCII names go through :func:`unicode_problem`, shared with HTTP path segments (5.1). It is
defence in depth against targets and middleware that normalise text before using it, which
would turn a name the policy saw as harmless into a separator, a dot or a different name:

* the text must be NFKC-normalised. This refuses full-width and other compatibility forms
  (full-width ``admin``, U+FF0E for ``.``, U+FF0F for ``/``) that a normalising target folds
  into ASCII, and (since NFKC text is also NFC) decomposed spellings of accented names that
  would dodge a deny rule written in the composed form;
* no character of the Unicode categories Cc (controls, including C1), Cf (format: zero-width
  characters, bidi overrides), Cs (surrogates), Co (private use), Cn (unassigned: their
  normalisation may change with the Unicode version) or Zl/Zp (line/paragraph separators);
* none of a short list of slash, backslash and dot look-alikes that survive NFKC but that
  "best-fit" code-page conversions (Windows) or IDNA-style mappings turn into ``/``, ``\\``
  or ``.`` (e.g. U+2215 DIVISION SLASH, U+00A5 YEN SIGN, U+3002 IDEOGRAPHIC FULL STOP).

Windows-only name tricks (trailing dots or spaces, ``:`` streams, ``CON``) are not handled
here: the file targets are POSIX servers; a Windows target needs its own rules.

Pure: no I/O. The check runs on every file operation, so ASCII paths take a single regex.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from tether.policy.errors import AmbiguousPath

__all__ = ["MAX_FILE_PATH", "canonical_file_path", "unicode_problem"]

MAX_FILE_PATH: Final = 4096
"""Longest accepted file path, in characters."""

# Absolute, no empty segment, no trailing '/', no control character or backslash. Dot-only
# segments and non-ASCII text are checked after this fast test.
_PLAIN_FILE_PATH: Final = re.compile(r"(?:/[^\x00-\x1f\x7f-\x9f/\\]+)+")
_BAD_FILE_CHAR: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")

_BANNED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

# Stable under NFKC, yet mapped to '/', '\' or '.' by best-fit code pages or IDNA mappings.
_LOOKALIKES: Final = frozenset(
    "\u00a5"  # YEN SIGN: '\' in Japanese code pages
    "\u20a9"  # WON SIGN: '\' in Korean code pages
    "\u2044"  # FRACTION SLASH
    "\u2215"  # DIVISION SLASH
    "\u2216"  # SET MINUS
    "\u29f5"  # REVERSE SOLIDUS OPERATOR
    "\u29f8"  # BIG SOLIDUS
    "\u29f9"  # BIG REVERSE SOLIDUS
    "\u3002"  # IDEOGRAPHIC FULL STOP (an IDNA dot)
)


def unicode_problem(text: str) -> str | None:
    """Why ``text`` (one decoded path segment or file name) is unsafe, or None if it is not.

    ASCII text is never a Unicode problem (the callers check ASCII characters themselves).
    """
    if text.isascii():
        return None
    for char in text:
        if char.isascii():
            continue
        category = unicodedata.category(char)
        if category in _BANNED_CATEGORIES:
            return f"the character U+{ord(char):04X} (Unicode category {category})"
        if char in _LOOKALIKES:
            return f"the separator or dot look-alike U+{ord(char):04X}"
    if not unicodedata.is_normalized("NFKC", text):
        return "text that is not NFKC-normalised (compatibility or decomposed characters)"
    return None


def canonical_file_path(path: str) -> str:
    """Return ``path`` unchanged if it is canonical (spec 5.5); raise ``AmbiguousPath`` if not."""
    if len(path) > MAX_FILE_PATH:
        raise AmbiguousPath(f"file path longer than {MAX_FILE_PATH} characters")
    if path == "/":
        return path
    if _PLAIN_FILE_PATH.fullmatch(path) is None:
        raise AmbiguousPath(_shape_problem(path))
    if "/." in path:
        _reject_dot_segments(path)
    if not path.isascii():
        _reject_unicode(path)
    return path


def _shape_problem(path: str) -> str:
    """Explain why a path failed the fast shape test."""
    if not path.startswith("/"):
        return f"file path {_show(path)} is not absolute"
    bad = _BAD_FILE_CHAR.search(path)
    if bad is not None:
        if bad.group() == "\\":
            return f"file path {_show(path)} holds a backslash"
        return f"file path {_show(path)} holds a control character"
    if path.endswith("/"):
        return f"file path {_show(path)} ends with '/'"
    return f"file path {_show(path)} holds an empty segment ('//')"


def _reject_dot_segments(path: str) -> None:
    for segment in path[1:].split("/"):
        if not segment.strip("."):
            raise AmbiguousPath(f"file path {_show(path)} holds the segment {segment!r}")


def _reject_unicode(path: str) -> None:
    for segment in path[1:].split("/"):
        problem = unicode_problem(segment)
        if problem is not None:
            raise AmbiguousPath(f"file path {_show(path)} holds {problem}")


def _show(text: str, limit: int = 80) -> str:
    """A short, ASCII-only rendering of untrusted text for error details."""
    shown = ascii(text[:limit])
    if len(text) > limit or len(shown) > limit:
        return shown[:limit] + "..."
    return shown
