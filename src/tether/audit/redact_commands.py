"""Passwords that command-line tools take in flags whose name says nothing.

The shape rules of :mod:`tether.audit.redact` find ``--password=…`` and ``--token …`` by
the flag's name. Some tools take a password in a one-letter flag, or as the part after the
colon of a ``user:password`` value, which no name reveals:

==========================================  =========================================
tool (the command word, or its path)        secret
==========================================  =========================================
``mysql``, ``mysqldump``, ``mysqladmin``…,  ``-pSECRET`` (glued only: ``-p`` followed
``mariadb``, ``mariadb-dump``…              by a blank prompts, and the next word is
                                            the database)
``sshpass``                                 ``-p SECRET``, ``-pSECRET``
``redis-cli``                               ``-a SECRET``, ``-aSECRET``
``curl``                                    ``-u user:SECRET``, ``-U user:SECRET``
                                            (also glued, and in a group: ``-su u:S``)
``ldapsearch``, ``ldapmodify``…             ``-w SECRET``, ``-wSECRET``
``mongosh``, ``mongo``                      ``-p SECRET``, ``-pSECRET``
``sqlcmd``                                  ``-P SECRET``, ``-PSECRET``
any                                         ``--user user:SECRET``,
                                            ``--proxy-user user:SECRET`` (``=`` too)
any (OpenSSL's pass phrase arguments)       ``pass:SECRET`` (``-passin pass:…``)
==========================================  =========================================

Short flags are read as ``getopt`` does: the letters of a group are options until one that
takes an argument, whose argument is the rest of the word or else the next word. A tool's
flags are read after its command word and until the next tool's, whatever lies between
(a separator, a quote: ``bash -c "curl -u a:b …"`` too): over-redact rather than leak.
A value may be quoted; a quote never closed runs to the end of the text.

Security decisions:

* **Linear time**: one left-to-right pass of one pattern whose every run is possessive or
  bounded, then at most 32 letters of a flag group and one value per match; the scan goes
  on after the value it replaced.
* The user name before the colon stays (evidence); everything after it goes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_TOOLS: Final = re.compile(
    r"""
    (?<![^\s;&|()`'"/])
    (?P<tool>mysql(?:dump|admin|import|show|check|pump|slap|binlog)?|mariadb(?:-[a-z]{1,12}+)?
       |sshpass|redis-cli|curl|ldap[a-z]{1,12}+|mongosh|mongo|sqlcmd)(?![A-Za-z0-9_.-])
  | (?<![^\s'"])(?P<long>--(?:proxy-)?user)(?:=|[ \t]++)(?=[^\s])
  | (?<![^\s'"=])(?P<passphrase>pass:)(?=[^\s])
  | (?<![^\s'"])-(?P<short>[A-Za-z])
    """,
    re.VERBOSE,
)
# A flag's value: a quoted string (a quote never closed runs to the end) or a word.
_VALUE: Final = re.compile(r"""(?:"[^"]*"|'[^']*'|"[^"]*+\Z|'[^']*+\Z|[^\s"']++)""")
_BLANKS: Final = re.compile(r"[ \t]++(?=\S)")
_BLANK: Final = re.compile(r"\s")
_GROUP_MAX: Final = 32
# Substrings of which every match of _TOOLS holds one: text without them is left alone.
MARKS: Final = (
    "mysql", "mariadb", "sshpass", "redis-cli", "curl", "-user", "ldap", "mongo", "sqlcmd",
    "pass:",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Tool:
    secret_letters: str  # options whose argument is secret
    argument_letters: str  # other options that take an argument (the rest is theirs)
    separate: bool  # whether the secret may be the next word (else glued only)
    after_colon: bool  # ``user:SECRET``: only what follows the first colon is secret
    once: bool  # the tool runs another command after its options (sshpass)


_MYSQL: Final = _Tool("p", "uhPSDeOo", separate=False, after_colon=False, once=False)
_BY_NAME: Final = {
    "sshpass": _Tool("p", "fdP", separate=True, after_colon=False, once=True),
    "redis-cli": _Tool("a", "hpnsuc", separate=True, after_colon=False, once=False),
    "curl": _Tool("uU", "HdXAoeEbcFKrTxyYzmwCD", separate=True, after_colon=True, once=False),
    "mongosh": _Tool("p", "u", separate=True, after_colon=False, once=False),
    "mongo": _Tool("p", "u", separate=True, after_colon=False, once=False),
    "sqlcmd": _Tool("P", "SUdQqioHcstlW", separate=True, after_colon=False, once=False),
}
_LDAP: Final = _Tool("w", "DbHhpfsayYUXOReEolzST", separate=True, after_colon=False, once=False)
_USER_FLAG: Final = _Tool("", "", separate=True, after_colon=True, once=False)


def has_mark(text: str) -> bool:
    """Whether ``text`` may hold a secret of this module (False is certain); :data:`MARKS`
    written out, as C substring tests (this runs on every string of every event)."""
    return (
        "curl" in text or "mysql" in text or "-user" in text or "sshpass" in text
        or "mariadb" in text or "redis-cli" in text or "ldap" in text or "mongo" in text
        or "sqlcmd" in text or "pass:" in text
    )  # fmt: skip


def redact_commands(text: str, replacement: str) -> str:
    """``text`` with every secret of the table above replaced by ``replacement``."""
    parts: list[str] = []
    position = 0
    tool: _Tool | None = None
    for match in _TOOLS.finditer(text):
        if match.start() < position:
            continue  # inside a value already replaced
        name = match["tool"]
        if name is not None:
            tool = _BY_NAME.get(name, _LDAP if name.startswith("ldap") else _MYSQL)
            continue
        cut = _secret_of(text, match, tool)
        if cut is None:
            continue
        if tool is not None and tool.once and match["short"] is not None:
            tool = None  # what follows is the command the tool runs
        parts.append(text[position : cut[0]])
        parts.append(replacement)
        position = cut[1]  # a closing quote stays
    parts.append(text[position:])
    return "".join(parts)


def _secret_of(text: str, match: re.Match[str], tool: _Tool | None) -> tuple[int, int] | None:
    """The span of the secret a flag match introduces, if any."""
    if match["passphrase"] is not None:
        start, end = _passphrase_span(text, match.start(), match.end())
        return (start, end) if start < end else None
    if match["long"] is not None:
        span = _value_span(text, match.end())
        return None if span is None else _secret_part(text, span, _USER_FLAG)
    if tool is None:
        return None
    span = _short_secret(text, match.start("short"), tool)
    return None if span is None else _secret_part(text, span, tool)


def _short_secret(text: str, at: int, tool: _Tool) -> tuple[int, int] | None:
    """The span of the secret argument of the flag group starting at ``at``, if any."""
    index = at
    while index < len(text) and index - at < _GROUP_MAX:
        letter = text[index]
        if not (letter.isascii() and letter.isalpha()):
            return None
        if letter in tool.secret_letters:
            if index + 1 < len(text) and not text[index + 1].isspace():
                return _value_span(text, index + 1)
            if not tool.separate:
                return None
            blanks = _BLANKS.match(text, index + 1)
            return None if blanks is None else _value_span(text, blanks.end())
        if letter in tool.argument_letters:
            return None
        index += 1
    return None


def _passphrase_span(text: str, start: int, at: int) -> tuple[int, int]:
    """The secret of ``pass:SECRET``: to the closing quote when the word is quoted (a
    quote never closed: to the end), else to the next blank."""
    quote = text[start - 1] if start > 0 and text[start - 1] in "\"'" else ""
    if quote:
        end = text.find(quote, at)
        return at, len(text) if end < 0 else end
    blank = _BLANK.search(text, at)
    return at, len(text) if blank is None else blank.start()


def _value_span(text: str, at: int) -> tuple[int, int] | None:
    found = _VALUE.match(text, at)
    return None if found is None or found.end() == at else found.span()


def _secret_part(text: str, span: tuple[int, int], tool: _Tool) -> tuple[int, int] | None:
    """What of the value at ``span`` is secret: all of it (inside its quotes), or what
    follows its first colon; None when nothing is."""
    start, end = span
    quote = text[start] if text[start] in "\"'" else ""
    inner_end = end - 1 if quote and end - start >= 2 and text[end - 1] == quote else end
    inner_start = start + len(quote)
    if tool.after_colon:
        colon = text.find(":", inner_start, inner_end)
        if colon < 0:
            return None
        inner_start = colon + 1
    return (inner_start, inner_end) if inner_start < inner_end else None
