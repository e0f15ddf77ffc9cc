"""Validation of a request's identities and context (spec section 2), for
:func:`tether.policy.request.normalize` and its fast path.

Each function checks one top-level field and returns its plain value, or raises
:class:`~tether.policy.errors.InvalidRequest`; none ever returns a half-checked value.

Choices where the spec is silent (all deny-side):

* Unknown keys inside an identity object are ``invalid-request``.
* Label values must be strings; ids must be non-empty strings.
* ``scope`` without a ``targets`` list, or with an empty one, puts every target
  out of scope.
* ``time`` must be RFC 3339 with an explicit offset (``Z`` or ``+hh:mm``), and a moment a
  timestamp can hold in UTC. The forms Python's ``fromisoformat`` reads beyond RFC 3339 (week
  dates, the basic format, no seconds) are refused, and a moment of year 1 or 9999 that
  leaves the calendar once in UTC is ``invalid-request``, not an internal error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from tether.policy.errors import InvalidRequest
from tether.policy.request_model import Delegation

TOP_KEYS = frozenset(
    {
        "agent",
        "runtime",
        "delegation",
        "task",
        "scope",
        "target",
        "action",
        "source_ip",
        "time",
        "approvals",
    }
)

_ID_KEYS = {"id": frozenset({"id", "labels"}), "name": frozenset({"name", "labels"})}


def identity(
    value: Mapping[str, Any], key: str, *, required: bool, id_key: str = "id"
) -> tuple[str | None, dict[str, str]]:
    """The id (or name) and labels of the identity object ``value[key]``."""
    obj = value.get(key)
    if obj is None:
        if required:
            raise InvalidRequest(f"{key!r} is required")
        return None, {}
    if type(obj) is not dict:
        raise InvalidRequest(f"{key!r} must be an object")
    if not obj.keys() <= _ID_KEYS[id_key]:
        extra = obj.keys() - _ID_KEYS[id_key]
        raise InvalidRequest(f"unknown field(s) in {key!r}: {', '.join(sorted(map(str, extra)))}")
    ident = obj.get(id_key)
    if type(ident) is not str or not ident or len(ident) > 1024:
        raise InvalidRequest(f"{key}.{id_key} must be a non-empty string")
    labels = obj.get("labels")
    if labels is None:
        return ident, {}
    if not is_str_map(labels):
        raise InvalidRequest(f"{key}.labels must be an object of string values")
    return ident, labels


def is_str_map(value: object) -> bool:
    """True if ``value`` is a plain ``dict`` of ``str`` to ``str``."""
    if type(value) is not dict:
        return False
    for k, v in value.items():  # noqa: SIM110 - a plain loop is faster than all() here
        if type(k) is not str or type(v) is not str:
            return False
    return True


def delegation(obj: object) -> Delegation | None:
    """The ``delegation`` field: on whose behalf the agent acts, if anyone."""
    if obj is None:
        return None
    if not isinstance(obj, dict) or obj.keys() - {"user", "groups"}:
        raise InvalidRequest("'delegation' must be an object with 'user' and optional 'groups'")
    user = obj.get("user")
    if not isinstance(user, str) or not user:
        raise InvalidRequest("delegation.user must be a non-empty string")
    return Delegation(user, frozenset(_string_list(obj.get("groups", []), "delegation.groups")))


def task(obj: object) -> dict[str, Any]:
    """The ``task`` field, an object passed to CEL as is."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InvalidRequest("'task' must be an object")
    return obj


def scope(obj: object) -> tuple[str, ...] | None:
    """The targets of the ``scope`` field; None when the request has no scope."""
    if obj is None:
        return None
    if not isinstance(obj, dict) or obj.keys() - {"targets"}:
        raise InvalidRequest("'scope' must be an object with 'targets'")
    return tuple(_string_list(obj.get("targets", []), "scope.targets"))


def approvals(obj: object) -> frozenset[str]:
    """The ``approvals`` field: the ids of the approvals the request holds."""
    if obj is None:
        return frozenset()
    return frozenset(_string_list(obj, "approvals"))


def _string_list(obj: object, where: str) -> list[str]:
    if not isinstance(obj, list) or not all(isinstance(v, str) for v in obj):
        raise InvalidRequest(f"{where} must be a list of strings")
    return obj


def optional_str(value: Mapping[str, Any], key: str) -> str | None:
    """``value[key]`` if it is a string, None if absent."""
    obj = value.get(key)
    if obj is not None and not isinstance(obj, str):
        raise InvalidRequest(f"{key!r} must be a string")
    return obj


# RFC 3339 section 5.6 date-time ("T" and "Z" may be lower case); ASCII digits only.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def timestamp(obj: object) -> datetime | None:
    """The ``time`` field, an RFC 3339 timestamp with an offset."""
    if obj is None:
        return None
    if not isinstance(obj, str):
        raise InvalidRequest("'time' must be an RFC 3339 string")
    if not _RFC3339.fullmatch(obj):
        raise InvalidRequest("'time' needs a date, a time and an offset (e.g. ...T10:00:00Z)")
    try:
        parsed = datetime.fromisoformat(obj.upper())
        parsed.astimezone(UTC)  # CEL sees it in UTC: year 1 or 9999 may leave the calendar
    except (ValueError, OverflowError):
        raise InvalidRequest(f"'time' is not an RFC 3339 timestamp: {obj[:64]!r}") from None
    return parsed
