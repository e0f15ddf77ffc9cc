"""Building an event: the fast checks (every string field at once, the duration in one
comparison, the redacted walk with its inline cases) decide exactly as the field-by-field
rules they stand for, for any input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.audit.events import AuditEvent, EventError, frozen_json, storable
from tether.audit.redact import REDACTED, Redactor

STRING_FIELDS = ("agent", "runtime", "task", "user", "target", "decision", "rule", "reason",
                 "policy_version", "session_id", "source_ip")  # fmt: skip
# Any text: NUL, lone surrogates, non-ASCII, the empty string.
any_text = st.text(st.characters(), max_size=12)
field_values = st.none() | any_text | st.integers() | st.binary(max_size=3)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional=dict.fromkeys(STRING_FIELDS, field_values)))
def test_string_fields_are_stored_or_refused_one_by_one(fields: dict[str, Any]) -> None:
    bad = [name for name, value in fields.items() if value is not None and type(value) is not str]
    if bad:
        with pytest.raises(EventError, match="must be a string"):
            AuditEvent(kind="decision", **fields)
        return
    event = AuditEvent(kind="decision", **fields)
    for name in STRING_FIELDS:
        value = fields.get(name)
        assert getattr(event, name) == (None if value is None else storable(value, name))
        stored = getattr(event, name)
        if stored is not None:  # storable: no NUL, and valid UTF-8 (encode would raise)
            assert "\x00" not in stored
            stored.encode("utf-8")


@settings(max_examples=150, deadline=None)
@given(
    st.none()
    | st.floats()
    | st.integers(-(2**70), 2**70)
    | st.booleans()
    | st.sampled_from([-0.0, math.inf, -math.inf, math.nan, "1"])
)
def test_a_duration_is_a_finite_non_negative_double_or_refused(value: Any) -> None:
    good = value is None or (
        not isinstance(value, bool | str) and math.isfinite(value) and value >= 0
    )
    if not good:
        with pytest.raises(EventError, match="duration_ms must be"):
            AuditEvent(kind="decision", duration_ms=value)
        return
    duration = AuditEvent(kind="decision", duration_ms=value).duration_ms
    assert (
        duration is None
        if value is None
        else (type(duration) is float and duration == float(value))
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | any_text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=12,
)
# Keys that the redactor's name rule catches, mixed with ordinary ones.
keys = st.sampled_from(["password", "db_password", "X-Api-Key", "token", "path", "n"]) | any_text


def reference(value: Any, redactor: Redactor) -> Any:
    """The redacted, storable copy by the documented rules, written plainly."""
    if isinstance(value, str):
        return storable(redactor.text(value), "")
    if isinstance(value, dict):
        return {
            storable(key, ""): REDACTED
            if item is not None and redactor.sensitive_name(key)
            else reference(item, redactor)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return tuple(reference(item, redactor) for item in value)
    return value


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, json_values | st.dictionaries(keys, json_values, max_size=3)))
def test_the_redacting_walk_applies_every_rule_at_every_depth(value: dict[str, Any]) -> None:
    redactor = Redactor()
    frozen = redactor.event_json(value, "action")
    assert frozen == reference(value, redactor)
    # Built once, taken as it is by an event: not walked (and not redacted) twice.
    assert AuditEvent(kind="decision", action=frozen).action is frozen
    with pytest.raises(TypeError):
        frozen["x"] = 1  # type: ignore[index]


def test_an_event_without_detail_shares_the_empty_checked_object() -> None:
    first, second = AuditEvent(kind="decision"), AuditEvent(kind="decision", detail={})
    assert first.detail == {} and first.detail is second.detail
    assert frozen_json(first.detail, "detail") is first.detail
    with pytest.raises(TypeError):
        first.detail["x"] = 1  # type: ignore[index]
