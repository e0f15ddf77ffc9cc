"""The audit event: one semantic fact about what an agent, a person or Tether did.

:class:`AuditEvent` is immutable and carries every field an investigation asks about: when
(``time``), who (``agent``, ``runtime``, ``task``, and for a delegation ``user`` and the
``actor_chain``), where from (``source_ip``, ``session_id``), on what (``target``), doing
what (``action``, kind-specific), the verdict (``decision``, ``rule``, ``reason``,
``policy_version``) and how much (``bytes_in``, ``bytes_out``, ``rows``, ``duration_ms``).

Security decisions:

* **Events are built already redacted.** The emitter (:mod:`tether.audit.emit`) passes
  ``action`` and ``detail`` through :mod:`tether.audit.redact` before an event exists, so
  no code path holds an unredacted event that could be stored or exported by mistake.
* **Only JSON values, checked at construction.** ``action`` and ``detail`` hold strings,
  integers, finite floats, booleans, None, lists and string-keyed mappings; anything else
  (bytes, NaN, a datetime) is refused here rather than serialised in some ad-hoc way, so
  the canonical form that is hashed (:mod:`tether.audit.canonical`) is always defined.
  They are copied into read-only mappings and tuples: an event cannot change once built.
* **Strings are storable everywhere.** A NUL character (PostgreSQL's ``text`` cannot hold
  it) or a lone surrogate (not UTF-8) in a string field is rewritten as its backslash
  escape (``\\x00``, ``\\udc80``) when the event is built, so an agent cannot make an append
  fail, and the evidence is kept rather than dropped.
* **Times are aware UTC with microseconds**, the precision both stores keep; a naive
  time is refused, since its zone would be a guess.
* ``seq``, ``prev_hash`` and ``hash`` are None until the store appends the event: the
  chain position is the store's to give (:mod:`tether.audit.log`), never the emitter's.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NoReturn, Protocol

KINDS: Final = frozenset(
    {
        "session.start",
        "session.end",
        "decision",
        "http.exchange",
        "ssh.command",
        "file.transfer",
        "sql.statement",
        "mcp.call",
        "token.issued",
        "token.refused",
        "revocation",
        "admin.change",
        "approval",
    }
)

# The count fields: non-negative integers when given, that fit the BIGINT columns (a larger
# one would fail the whole batch it is written in, other events with it).
_COUNTS: Final = ("bytes_in", "bytes_out", "rows")
MAX_COUNT: Final = 2**63 - 1
_STRINGS: Final = (
    "id", "kind", "agent", "runtime", "task", "user", "target", "decision", "rule", "reason",
    "policy_version", "session_id", "source_ip",
)  # fmt: skip


class FrozenJson(dict[str, Any]):
    """A JSON object that refuses changes; a ``dict`` so the C JSON encoder takes it as is."""

    __slots__ = ()

    def _refuse(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("audit event fields cannot change")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda item: item[0])))


class _Checked(FrozenJson):
    """A JSON object that :func:`frozen_json` built and checked: events take it as it is.
    Private, so only this module makes one; a plain :class:`FrozenJson` is checked again.
    ``cleaned_by`` is the cleaner it was built with (None: none), so that cleaning it again
    with the same one, which could change nothing, is skipped (a front-end that caches the
    cleaned action of a statement shape then pays for its cleaning once)."""

    __slots__ = ("cleaned_by",)

    cleaned_by: Cleaner | None


_EMPTY: Final = _Checked()  # checked: nothing in it
_EMPTY.cleaned_by = None


class EventError(ValueError):
    """An event that cannot exist: unknown kind, naive time, a value that is not JSON."""


_ID_BATCH: Final = 256
_ids: list[str] = []  # ids made ahead, taken with list.pop (atomic under the GIL)
os.register_at_fork(after_in_child=_ids.clear)  # a forked child must not reuse the parent's


def new_event_id() -> str:
    """A fresh event id: a random (version 4) UUID as 32 lowercase hex digits.

    Made from ``os.urandom`` in batches of :data:`_ID_BATCH`, one system call for many
    events: ``uuid.uuid4().hex`` costs several times more, on the path of every action."""
    try:
        return _ids.pop()
    except IndexError:
        raw = os.urandom(16 * _ID_BATCH).hex()
        # Version 4 in the 13th hex digit, the RFC 4122 variant (8, 9, a or b) in the 17th.
        _ids.extend(
            f"{raw[i : i + 12]}4{raw[i + 13 : i + 16]}{'89ab'[int(raw[i + 16], 16) & 3]}"
            f"{raw[i + 17 : i + 32]}"
            for i in range(0, len(raw), 32)
        )
        return _ids.pop()


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One audit event. Build it with keywords; the store fills ``seq`` and the hashes."""

    seq: int | None = None
    id: str = field(default_factory=new_event_id)
    time: datetime = field(default_factory=utc_now)
    kind: str
    agent: str | None = None
    runtime: str | None = None
    task: str | None = None
    user: str | None = None
    actor_chain: tuple[str, ...] = ()
    target: str | None = None
    action: Mapping[str, Any] = _EMPTY
    decision: str | None = None
    rule: str | None = None
    reason: str | None = None
    policy_version: str | None = None
    session_id: str | None = None
    source_ip: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    rows: int | None = None
    duration_ms: float | None = None
    detail: Mapping[str, Any] = _EMPTY
    prev_hash: str | None = None
    hash: str | None = None

    def __post_init__(self) -> None:
        # The common case costs a few C calls: every string field plain ASCII without NUL
        # (checked on their concatenation), known kind, UTC time, no counts or a float.
        setter = object.__setattr__
        strings = _string_fields(self)
        try:
            joined = "".join([value for value in strings if value is not None])
            plain = joined.isascii() and "\x00" not in joined
        except TypeError:  # a non-string: the loop below names it
            plain = False
        if not plain:
            for name, value in zip(_STRINGS, strings, strict=True):
                if value is not None and not _plain(value):
                    setter(self, name, storable(value, name))
        if self.kind not in KINDS:
            raise EventError(f"unknown audit event kind {self.kind!r}")
        moment = self.time
        if moment.tzinfo is not UTC:
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise EventError("an audit event's time must be timezone-aware")
            setter(self, "time", moment.astimezone(UTC))
        if self.actor_chain or type(self.actor_chain) is not tuple:
            setter(self, "actor_chain", tuple(storable(a, "actor_chain") for a in self.actor_chain))
        if self.bytes_in is not None or self.bytes_out is not None or self.rows is not None:
            for name in _COUNTS:
                _check_count(name, getattr(self, name))
        duration = self.duration_ms
        if duration is not None and not (type(duration) is float and 0.0 < duration < math.inf):
            _check_duration(duration)
            # Stored as a double: an int would read back as a float and hash differently;
            # and SQLite stores -0.0 as 0.0, so a zero is always written 0.0 (+ 0.0 does it).
            setter(self, "duration_ms", float(duration) + 0.0)
        if type(self.action) is not _Checked:
            setter(self, "action", frozen_json(self.action, "action"))
        if type(self.detail) is not _Checked:
            setter(self, "detail", frozen_json(self.detail, "detail"))

    def chained(self, seq: int, prev_hash: str, hash: str) -> AuditEvent:
        """This event at position ``seq`` of the chain (the store calls this). The copy is
        not validated again: it differs only by the three fields set here."""
        chained = object.__new__(AuditEvent)
        setter = object.__setattr__
        for name in _COPIED:
            setter(chained, name, getattr(self, name))
        setter(chained, "seq", seq)
        setter(chained, "prev_hash", prev_hash)
        setter(chained, "hash", hash)
        return chained


def _plain(value: object) -> bool:
    """A str that needs no rewriting: ASCII without NUL (the common case, checked fast)."""
    return type(value) is str and value.isascii() and "\x00" not in value


def storable(value: object, where: str) -> str:
    """``value`` with NUL and lone surrogates written as backslash escapes."""
    if not isinstance(value, str):
        raise EventError(f"{where} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _check_count(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise EventError(f"{name} must be a non-negative integer below 2**63, got {value!r}")


def _check_duration(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError(f"duration_ms must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise EventError(f"duration_ms must be finite and non-negative, got {value!r}")


class Cleaner(Protocol):
    """What :func:`frozen_json` can apply while it walks (the redactor): a replacement for
    the value of a sensitive key, and a rewrite of every string."""

    @property
    def replacement(self) -> str: ...

    def sensitive_name(self, name: str) -> bool: ...

    def text(self, value: str) -> str: ...


class _NotJson(Exception):
    """Raised inside :func:`_freeze`; the path is collected on the way out."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []


def frozen_json(
    value: Mapping[str, Any], where: str, cleaner: Cleaner | None = None
) -> Mapping[str, Any]:
    """A read-only deep copy of a JSON object, cleaned by ``cleaner`` if given, in one walk;
    :class:`EventError` naming ``where`` and the path inside it if it holds anything but
    JSON values."""
    if type(value) is _Checked and (cleaner is None or value.cleaned_by is cleaner):
        return value
    if type(value) is not dict and not isinstance(value, Mapping):
        raise EventError(f"{where} must be a mapping")
    if not value:
        return _EMPTY
    try:
        frozen = _freeze(value, 0, cleaner)
    except _NotJson as error:
        path = "".join(reversed(error.path))
        raise EventError(f"{where}{path}: {error.problem}") from None
    assert isinstance(frozen, Mapping)
    return frozen


_MAX_DEPTH: Final = 64


def _freeze(value: Any, depth: int, cleaner: Cleaner | None) -> Any:
    # Exact types first (what events hold in practice), each tested once; subclasses and
    # other mappings or sequences take the general branches after them.
    kind = type(value)
    if kind is str:
        if cleaner is not None:
            value = cleaner.text(value)
        return value if value.isascii() and "\x00" not in value else storable(value, "")
    if value is None or kind is int or kind is bool:
        return value
    if kind is dict or kind is _Checked:
        if depth >= _MAX_DEPTH:
            raise _NotJson(f"nested deeper than {_MAX_DEPTH} levels")
        return _freeze_object(value, depth, cleaner)
    if kind is float:
        if not math.isfinite(value):
            raise _NotJson(f"{value!r} is not a JSON number")
        return value
    if isinstance(value, str):
        return _freeze(str(value), depth, cleaner)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return _freeze(float(value), depth, cleaner)
    if depth >= _MAX_DEPTH:
        raise _NotJson(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        return _freeze_object(value, depth, cleaner)
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_freeze(item, depth + 1, cleaner))
            except _NotJson as error:
                error.path.append(f"[{index}]")
                raise
        return tuple(items)
    raise _NotJson(f"a {type(value).__name__} is not a JSON value")


def _freeze_object(value: Mapping[Any, Any], depth: int, cleaner: Cleaner | None) -> _Checked:
    # Strings, None, ints and bools (most values) are handled inline, as in _freeze.
    frozen: dict[str, Any] = {}
    sensitive = text = None
    if cleaner is not None:
        sensitive, text = cleaner.sensitive_name, cleaner.text
    inner = depth + 1
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise _NotJson(f"key {key!r} is not a string")
            key = str(key)
        name = key if key.isascii() and "\x00" not in key else storable(key, "")
        if sensitive is not None and item is not None and sensitive(key):
            assert cleaner is not None
            frozen[name] = cleaner.replacement
            continue
        kind = type(item)
        if kind is str:
            if text is not None:
                item = text(item)
            frozen[name] = item if item.isascii() and "\x00" not in item else storable(item, "")
            continue
        if item is None or kind is int or kind is bool:
            frozen[name] = item
            continue
        try:
            frozen[name] = _freeze(item, inner, cleaner)
        except _NotJson as error:
            error.path.append(f".{key}")
            raise
    checked = _Checked(frozen)
    checked.cleaned_by = cleaner
    return checked


# The string fields' values, in :data:`_STRINGS` order, in one C call.
_string_fields: Final = operator.attrgetter(*_STRINGS)

# The fields ``chained`` copies as they are (the other three it sets).
_COPIED: Final = tuple(
    f.name for f in dataclasses.fields(AuditEvent) if f.name not in ("seq", "prev_hash", "hash")
)
