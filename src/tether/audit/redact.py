"""Redaction: secrets never reach an audit event.

The :class:`Redactor` is applied by the emitter (:mod:`tether.audit.emit`) to everything
that came from outside Tether (headers, paths, commands, SQL, tool arguments, free-form
detail) before an :class:`~tether.audit.events.AuditEvent` is built. What it removes:

* **Headers**: the values of ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
  ``Set-Cookie`` and ``DPoP`` always, of every header named in
  ``audit.sensitive_headers``, and of every header whose name contains a sensitive field
  name (``X-Api-Key``, ``X-Auth-Token``). Names are compared case-insensitively.
* **Sensitive fields at any depth** of a JSON value: a key whose name, lowercased and
  without ``_``, ``-``, ``.`` and spaces, *contains* one of ``audit.sensitive_fields``
  (``password``, ``secret``, ``token``, ``apikey``...) has its value replaced, whatever
  it is (a string, a number, a whole object). Containment, not equality: ``db_password``
  and ``X-Access-Token`` are as secret as ``password``; a harmless ``max_tokens`` is
  redacted too, which costs a little evidence and never a secret.
* **Secrets inside any string**: JWTs and JWS/JWE compact serialisations (so access
  tokens and DPoP proofs), credentials after ``Bearer``, ``DPoP`` or ``Basic``, Tether's
  own join and admin tokens (``tjt_``/``tat_``: the id stays, the secret goes), the
  password of a URL (``scheme://user:PASSWORD@host``, to the last ``@`` before the host),
  PEM private keys, and the value of ``name=value``, ``name: value`` and ``--name value``
  when the name is sensitive (query strings, connection strings, environment assignments,
  command-line flags; a shell word ``NAME=value`` to the next blank).
* **Passwords in command-line flags whose name says nothing** (``mysql -pSECRET``,
  ``sshpass -p SECRET``, ``curl -u user:SECRET``, ``--user user:SECRET``...): see
  :mod:`tether.audit.redact_commands`.
* **Passwords in SQL**: the string literal after the ``PASSWORD`` keyword (``CREATE|ALTER
  ROLE|USER ... [ENCRYPTED] PASSWORD '...'``, ``OPTIONS (password '...')``), found with
  PostgreSQL's own scanner (``pglast.parser.scan``) so that every quoting form (standard,
  ``E''``, ``U&''``, dollar quotes, continued strings) is recognised as PostgreSQL would.
  A ``$n`` parameter there marks bound parameter ``n`` as secret. Text the scanner cannot
  scan (an unterminated quote) is redacted from the ``PASSWORD`` keyword to the end.

Security decisions:

* **Over-redact rather than leak.** Every rule errs towards hiding: containment for names,
  anything after a sensitive name up to a delimiter, the rest of an unscannable query.
* **A redacted value says it was redacted** (:data:`REDACTED`), so an investigator knows
  a value existed; its length is not kept, since a length narrows a guess.
* **No secret is ever hashed into an event** either: a hash of a low-entropy password is
  as good as the password to anyone who can guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pglast import parser as pg_parser

from tether.audit import redact_commands
from tether.audit.config import DEFAULT_SENSITIVE_FIELDS
from tether.audit.events import frozen_json

REDACTED: Final = "[REDACTED]"

ALWAYS_SENSITIVE_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "dpop"}
)

_NORMALISE: Final = str.maketrans("", "", "_-. ")
_STRING_TOKENS: Final = frozenset({"SCONST", "USCONST"})
_COMMENT_TOKENS: Final = frozenset({"C_COMMENT", "SQL_COMMENT"})

# Secrets recognised by their shape, wherever they are. Agent-controlled text of any length
# goes through this on the event loop, so it must stay linear: a run of name characters is
# entered only at its start (the look-behinds) and never backtracked into (possessive
# ``*+``), and a run that may be a secret is looked at for a bounded length; without that,
# an 8 KB path with a query string took seconds (review probes).
_SHAPES: Final = re.compile(
    r"""
    (?P<jwt>(?<![A-Za-z0-9_])eyJ[A-Za-z0-9_-]{2,4096}+(?:\.[A-Za-z0-9_-]*+){2,4})  # JWS, JWE
  | (?P<pem>-----BEGIN[A-Z ]*PRIVATE\ KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE\ KEY-----|\Z))
  | (?P<scheme>\b(?:[Bb]earer|BEARER|DPoP|dpop|DPOP|[Bb]asic|BASIC)\s+)[A-Za-z0-9._~+/=-]+
  | (?P<tether>\bt[aj]t_[A-Za-z0-9_-]{0,256}+\.)[A-Za-z0-9_-]+          # tat_<id>.<secret>
  | (?P<userinfo>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+://[^\s/:]{0,1024}+:)
        [^\s@]{1,1024}+(?:@[^\s@/?\#]{0,1024}+)*(?=@)  # to the last '@' before the host
  | (?P<usertoken>(?<![A-Za-z0-9+.-])(?i:https?)://)[^\s/:@?\#]{1,1024}+(?=@)  # a token as user
  | (?P<sqlpw>\b(?i:password)"?(?:\s|/\*[\s\S]{0,256}?\*/|--[^\n]{0,256}\n)*+)  # PASSWORD 'literal'
        (?:[Ee]'[^\n]{0,1024}'|(?:[Uu]&)?'(?:[^']|'')*'  # E'': to the last quote of the
                                                          # line (a shell may unescape \\')
          |\$(?P<tag>[A-Za-z_]*)\$[\s\S]*?\$(?P=tag)\$)
  | (?P<auth>(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]*?(?i:authorization)["']?\s*[:=]\s*)
        [A-Za-z][A-Za-z0-9!\#$%&*+.^_|~-]*[ \t]+[^\s"',;]+(?:[ \t]*,[ \t]*[^\s"',;]+)*
  | (?P<flag>(?<!\S)--?(?P<flagname>[A-Za-z][A-Za-z0-9_-]*+)(?:\s++|=))(?=\S)  # after a blank
  | (?P<pair>(?<![A-Za-z0-9_.-])[0-9.-]*+(?P<name>[A-Za-z_][A-Za-z0-9_.-]*+)["']?\s*+[:=]\s*+)
        (?=[^\s&;,}\]])
    """,
    re.VERBOSE,
)
# The value after a flag or a ``name=``/``name:`` (matched from the end of ``flag`` or
# ``pair`` only when the name is sensitive: the value of any other name is scanned like the
# rest of the text). A quote never closed runs to the end: over-redact rather than leak.
_FLAG_VALUE: Final = re.compile(r"""(?:"[^"]*"|'[^']*'|[^\s"']+|"[^"]*+|'[^']*+)""")
_PAIR_VALUE: Final = re.compile(
    r"""(?:(?:[Bb]earer|BEARER|DPoP|dpop|DPOP|[Bb]asic|BASIC)\s+[A-Za-z0-9._~+/=-]+
         |"(?:[^"\\]|\\.)*"|'[^']*'|[^\s&;,"'}\]]+|"(?:[^"\\]|\\.)*+|'[^']*+)""",
    re.VERBOSE,
)
# A Cookie (or Set-Cookie) written as text holds several values split by ';': to the end of
# the line or a quote.
_COOKIE_NAMES: Final = frozenset({"cookie", "set-cookie"})
_COOKIE_VALUE: Final = re.compile(r"""[^\r\n"']+""")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*+")
# The value of a shell word ``NAME=value``: to a blank or a shell operator (``&`` also ends
# the value of a query string written alone, ``token=…&page=2``).
_SHELL_VALUE: Final = re.compile(r"""(?:"[^"]*"|'[^']*'|[^\s"'&;|]+|"[^"]*+|'[^']*+)""")
_MAY_HOLD_SHAPE: Final = re.compile(
    r"eyJ|-----BEGIN|[Bb]earer|BEARER|DPoP|dpop|DPOP|[Bb]asic|BASIC|t[aj]t_|[:=]|(?<!\S)-"
    r"|(?i:password)\"?[\s/'EeUu$-]"
)
# Substrings of which every match of _MAY_HOLD_SHAPE holds one: a string with none of them
# cannot hold a secret by its shape, and ``in`` (a C substring search) answers several
# times faster than the pattern, on every string of every event.
_SHAPE_MARKS: Final = (
    "=", ":", "-", "eyJ", "earer", "EARER", "DPoP", "dpop", "DPOP", "asic", "ASIC", "t_", "'",
    "$",
)  # fmt: skip
# Bounded memo of the answers for strings and names seen before: the same agent names,
# paths, methods and keys come back on every event. Only *clean* strings are remembered,
# so the memo never holds a secret.
_MEMO_LIMIT: Final = 8192
_MEMO_MAX_CHARS: Final = 256


def _normal(name: str) -> str:
    return name.lower().translate(_NORMALISE)


@dataclass(frozen=True)
class Redactor:
    """Removes secrets; configured by ``audit.sensitive_headers`` and ``sensitive_fields``."""

    sensitive_headers: frozenset[str] = ALWAYS_SENSITIVE_HEADERS
    sensitive_fields: tuple[str, ...] = DEFAULT_SENSITIVE_FIELDS
    replacement: str = field(default=REDACTED, init=False)
    _fields: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _clean: dict[str, None] = field(init=False, repr=False, compare=False)
    _names: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        headers = ALWAYS_SENSITIVE_HEADERS | {h.lower() for h in self.sensitive_headers}
        object.__setattr__(self, "sensitive_headers", frozenset(headers))
        fields = tuple(sorted({_normal(f) for f in self.sensitive_fields if _normal(f)}))
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_clean", {})
        object.__setattr__(self, "_names", {})

    @classmethod
    def of(cls, headers: Iterable[str] = (), fields: Iterable[str] | None = None) -> Redactor:
        """A redactor with extra sensitive ``headers`` and these sensitive ``fields``."""
        chosen = DEFAULT_SENSITIVE_FIELDS if fields is None else tuple(fields)
        return cls(frozenset(headers), chosen)

    # --- names -----------------------------------------------------------------------------

    def sensitive_name(self, name: str) -> bool:
        """Whether a field, parameter or flag called ``name`` holds a secret."""
        known = self._names.get(name)
        if known is None:
            normal = _normal(name)
            known = any(f in normal for f in self._fields)
            if len(name) <= _MEMO_MAX_CHARS:
                _remember(self._names, name, known)
        return known

    def sensitive_header(self, name: str) -> bool:
        return name.lower() in self.sensitive_headers or self.sensitive_name(name)

    # --- values ----------------------------------------------------------------------------

    def text(self, value: str) -> str:
        """``value`` with every secret recognised by its shape or its name replaced."""
        if value in self._clean or not _has_mark(value):
            return value
        commands = redact_commands.has_mark(value)
        if not commands and _MAY_HOLD_SHAPE.search(value) is None:
            if len(value) <= _MEMO_MAX_CHARS:
                _remember(self._clean, value, None)
            return value
        redacted = redact_commands.redact_commands(value, REDACTED) if commands else value
        redacted = self._scan(redacted)
        if redacted == value and len(value) <= _MEMO_MAX_CHARS:
            _remember(self._clean, value, None)
        return redacted

    def _scan(self, value: str) -> str:
        """Every shape of ``value`` replaced, in one pass from left to right. The value of
        a name that is not sensitive is scanned in place, where the scan goes on, rather
        than by a recursive call: a value holding ``a:a:a:...`` recursed once per pair,
        which an agent's 6 KB path made a RecursionError (review probes)."""
        parts: list[str] = []
        position = 0
        search = _SHAPES.search
        while (match := search(value, position)) is not None:
            parts.append(value[position : match.start()])
            replaced, position = self._replace(match)
            parts.append(replaced)
        parts.append(value[position:])
        return "".join(parts)

    def _replace(self, match: re.Match[str]) -> tuple[str, int]:
        """The text that replaces ``match``, and where the scan goes on."""
        kind = match.lastgroup
        end = match.end()
        if kind in ("jwt", "pem"):
            return REDACTED, end
        if match["sqlpw"] is not None:  # the literal after PASSWORD
            return match["sqlpw"] + "'" + REDACTED + "'", end
        if match["auth"] is not None:  # an Authorization value: scheme and credentials
            return match["auth"] + REDACTED, end
        if kind in ("flag", "pair"):
            name = match["flagname"] if kind == "flag" else match["name"]
            if not self.sensitive_name(name):
                return match[kind], end  # the value is scanned as the rest of the text
            if kind == "flag":
                pattern = _FLAG_VALUE
            elif name.lower() in _COOKIE_NAMES:  # every cookie of the line, not the first
                pattern = _COOKIE_VALUE
            else:
                pattern = _SHELL_VALUE if _shell_assignment(match) else _PAIR_VALUE
            found = pattern.match(match.string, end)
            if found is None:
                return match[kind], end
            return match[kind] + _quoted_like(found[0], REDACTED), found.end()
        return match[kind or 0] + REDACTED, end  # scheme, tether, userinfo: the prefix stays

    def json(self, value: Any) -> Any:
        """A copy of a JSON value: sensitive keys' values replaced at any depth, strings
        passed through :meth:`text`."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {
                key: REDACTED if self.sensitive_name(str(key)) and item is not None
                else self.json(item)
                for key, item in value.items()
            }  # fmt: skip
        if isinstance(value, list | tuple):
            return [self.json(item) for item in value]
        return value

    def event_json(self, value: Mapping[str, Any], where: str) -> Mapping[str, Any]:
        """What :meth:`json` does, into the read-only, checked form an
        :class:`~tether.audit.events.AuditEvent` holds, in one walk."""
        return frozen_json(value, where, self)

    def headers(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Any:
        """Headers with sensitive values replaced, in the shape given (a mapping, or a list
        of ``(name, value)`` pairs, which keeps repeated headers)."""
        if isinstance(headers, Mapping):
            return {name: self._header(name, value) for name, value in headers.items()}
        return [[name, self._header(name, value)] for name, value in headers]

    def _header(self, name: str, value: Any) -> Any:
        if self.sensitive_header(str(name)):
            return REDACTED
        return self.text(value) if isinstance(value, str) else self.json(value)

    # --- SQL -------------------------------------------------------------------------------

    def sql(self, query: str) -> str:
        """``query`` with the literal after every ``PASSWORD`` replaced (then :meth:`text`)."""
        return self.sql_with_params(query, ())[0]

    def sql_with_params(self, query: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
        """``(query, params)`` with passwords redacted in both (``PASSWORD $n``)."""
        out_params = [self.json(p) for p in params]
        if "password" not in query.lower():
            return self.text(query), out_params
        spans, secret_params = _password_spans(query)
        for number in secret_params:
            if 0 < number <= len(out_params):
                out_params[number - 1] = REDACTED
        return self.text(_cut(query, spans)), out_params


def _shell_assignment(match: re.Match[str]) -> bool:
    """Whether a ``pair`` is a shell word ``NAME=value`` (``PGPASSWORD=… psql``): its value
    runs to the next blank or shell operator, a ``,`` ``}`` or ``]`` in it included."""
    start, text = match.start(), match.string
    return (
        (start == 0 or text[start - 1].isspace())
        and match["pair"].endswith("=")
        and _ENV_NAME.fullmatch(match["pair"], 0, len(match["pair"]) - 1) is not None
    )


def _has_mark(value: str) -> bool:
    """Whether ``value`` holds one of :data:`_SHAPE_MARKS` (written out: no loop)."""
    return (
        "=" in value or ":" in value or "-" in value or "eyJ" in value or "earer" in value
        or "EARER" in value or "DPoP" in value or "dpop" in value or "DPOP" in value
        or "asic" in value or "ASIC" in value or "t_" in value or "'" in value
        or "$" in value
    )  # fmt: skip


def may_hold_shape(value: str) -> bool:
    """Whether ``value`` may hold a secret recognised by its shape (False is certain)."""
    return _has_mark(value) and (
        redact_commands.has_mark(value) or _MAY_HOLD_SHAPE.search(value) is not None
    )


def _remember(memo: dict[str, Any], key: str, value: Any) -> None:
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def _quoted_like(original: str, replacement: str) -> str:
    if original[:1] in ("'", '"') and len(original) >= 2:
        return original[0] + replacement + original[0]
    return replacement


def _password_spans(query: str) -> tuple[list[tuple[int, int]], list[int]]:
    """Spans of the string literals after ``PASSWORD`` and the ``$n`` numbers there."""
    try:
        tokens = pg_parser.scan(query)
    except pg_parser.ParseError:
        start = query.lower().find("password")
        return [(start + len("password"), len(query))], []
    spans: list[tuple[int, int]] = []
    numbers: list[int] = []
    for index, token in enumerate(tokens):
        # PASSWORD, or an option named "password" (CREATE USER MAPPING ... OPTIONS)
        if query[token.start : token.end + 1].lower().strip('"') != "password":
            continue
        for following in tokens[index + 1 :]:
            if following.name in _COMMENT_TOKENS:  # the server reads a comment as a blank
                continue
            if following.name in _STRING_TOKENS:
                spans.append((following.start, following.end + 1))
                continue
            if following.name == "PARAM":
                text = query[following.start + 1 : following.end + 1]
                if text.isdigit():
                    numbers.append(int(text))
            break
    return spans, numbers


def _cut(query: str, spans: list[tuple[int, int]]) -> str:
    parts: list[str] = []
    position = 0
    for start, end in sorted(spans):
        if start < position:
            continue
        parts.append(query[position:start])
        parts.append(f"'{REDACTED}'")
        position = end
    parts.append(query[position:])
    return "".join(parts)
