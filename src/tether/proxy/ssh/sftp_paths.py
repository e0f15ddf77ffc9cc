"""SFTP paths as the policy sees them: canonical, absolute, resolved against the remote home.

An SFTP client sends paths as bytes, absolute or relative to the login's home directory.
:func:`absolute_path` turns one into the text the policy decides on (spec 5.5):

* the bytes must be UTF-8 (a name that is not has no stable text for a glob to match);
* a relative path is joined to the remote home (asked of the target once per channel);
* nothing else is changed: the policy engine denies a path that is not canonical (``.`` or
  ``..`` segments, ``//``, a trailing ``/``, a backslash, a control character) as
  ``ambiguous-path``, audited like any decision, and on allow the target receives exactly
  the text the policy saw. A path is never repaired.

:func:`resolve_realpath` answers the SFTP ``realpath`` request, which touches no file: it
folds ``.`` and ``..`` lexically (``cd ..`` in ``sftp`` sends ``realpath("/home/a/..")``) and
returns a canonical path or refuses. It does not follow symbolic links; the target follows
links when a later operation uses the path (the policy applies to the path as named).
"""

from __future__ import annotations

import posixpath

from tether.policy.errors import AmbiguousPath
from tether.policy.filepath import canonical_file_path


class PathRefused(ValueError):
    """A path the broker will not pass on; the message says why."""


def decode_path(raw: bytes) -> str:
    """The text of an SFTP path; :class:`PathRefused` if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PathRefused("the path is not valid UTF-8") from None


def absolute_path(raw: bytes, home: str) -> str:
    """The absolute path ``raw`` names (relative to ``home``), as text, for the policy."""
    text = decode_path(raw)
    if text.startswith("/"):
        return text
    return home.rstrip("/") + "/" + text if text else home


def resolve_realpath(raw: bytes, home: str) -> str:
    """``realpath``: ``raw`` joined to ``home`` with ``.``/``..`` folded; canonical or refused."""
    text = decode_path(raw)
    joined = text if text.startswith("/") else posixpath.join(home, text)
    folded = posixpath.normpath(joined)
    if folded.startswith("//"):
        folded = "/" + folded.lstrip("/")
    try:
        return canonical_file_path(folded)
    except AmbiguousPath as error:
        raise PathRefused(str(error.detail or "ambiguous path")) from None
