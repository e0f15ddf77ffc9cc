"""Property tests of the archive verifier (tether.audit.archive): any bytes are read without
an exception and never pass for an archive; a genuine archive always verifies; and every
change to one, a field of an event or a line removed, repeated or moved, is refused."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.audit.conftest import sample
from tether.audit.archive import FORMAT, checkpoint_json, read_lines, verify_archive
from tether.audit.canonical import GENESIS, event_hash, event_json, format_time
from tether.audit.checkpoints import sign_checkpoint
from tether.identity.keys import SigningKey

KEY = SigningKey.generate(0)
KEYS: dict[str, Any] = {KEY.kid: KEY.private_key.public_key()}
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _line(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def archive_lines(count: int, after: int = 0) -> list[bytes]:
    """A genuine archive of ``count`` events after ``after``, a checkpoint at its last."""
    prev = GENESIS if after == 0 else "ab" * 32
    lines = [_line({"format": FORMAT, "after": after, "prev_hash": prev,
                    "through": after + count, "events": count,
                    "created": format_time(T0)})]  # fmt: skip
    for seq in range(after + 1, after + count + 1):
        event = sample(seq, time=T0)
        event = event.chained(seq, prev, event_hash(event, seq, prev))
        lines.append(_line({"event": event_json(event)}))
        prev = event.hash or ""
    mark = sign_checkpoint(KEY, after + count, prev, T0)
    lines.append(_line({"checkpoint": checkpoint_json(mark)}))
    return lines


def check(lines: list[bytes], keys: dict[str, Any] = KEYS) -> Any:
    return verify_archive(read_lines(io.BytesIO(b"".join(lines))), keys)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_any_bytes_are_read_and_never_pass(chunks: list[bytes]) -> None:
    report = check(chunks)
    assert not report.ok
    assert len(report.sha256) == 64


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(st.lists(st.dictionaries(st.text(max_size=10), json_values, max_size=6), max_size=6))
def test_json_shaped_lines_are_never_an_archive(documents: list[dict[str, Any]]) -> None:
    lines = [_line(document) for document in documents]
    assert not check(lines).ok
    assert not check([archive_lines(1)[0], *lines]).ok  # a genuine header, nothing signed


@settings(max_examples=50)
@given(st.integers(1, 25), st.integers(0, 1000))
def test_a_genuine_archive_verifies(count: int, after: int) -> None:
    report = check(archive_lines(count, after))
    assert report.ok, report.findings
    assert (report.events, report.after, report.through) == (count, after, after + count)
    assert not check(archive_lines(count, after), {}).ok  # no key: nothing vouches for it


FIELDS = ("kind", "agent", "runtime", "task", "target", "decision", "rule", "reason", "seq",
          "prev_hash", "hash", "time", "action", "detail", "id", "bytes_in")  # fmt: skip


@settings(max_examples=300)
@given(st.integers(2, 12), st.data())
def test_a_changed_event_is_refused(count: int, data: st.DataObject) -> None:
    lines = archive_lines(count)
    index = data.draw(st.integers(1, count))
    document = json.loads(lines[index])
    field = data.draw(st.sampled_from(FIELDS))
    value = data.draw(
        {
            "seq": st.integers(0, 100),
            "bytes_in": st.integers(0, 10**6),
            "time": st.just("2026-12-01T10:00:00.000001Z"),
            "action": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
            "detail": st.dictionaries(st.text(max_size=4), st.integers(), min_size=1, max_size=2),
            "prev_hash": st.text("0123456789abcdef", min_size=64, max_size=64),
            "hash": st.text("0123456789abcdef", min_size=64, max_size=64),
        }.get(field, st.text(min_size=1, max_size=12))
    )
    if document["event"].get(field) == value:
        return
    document["event"][field] = value
    lines[index] = _line(document)
    assert not check(lines).ok


@settings(max_examples=300)
@given(st.integers(2, 10), st.data())
def test_a_line_removed_repeated_or_moved_is_refused(count: int, data: st.DataObject) -> None:
    lines = archive_lines(count)
    index = data.draw(st.integers(0, len(lines) - 1))
    how = data.draw(st.sampled_from(("remove", "repeat", "move")))
    changed = list(lines)
    if how == "remove":
        del changed[index]
    elif how == "repeat":
        changed.insert(index, lines[index])
    else:
        line = changed.pop(index)
        changed.insert(data.draw(st.integers(0, len(changed))), line)
    if changed == lines:
        return
    assert not check(changed).ok
