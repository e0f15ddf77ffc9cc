"""The action digest: never crashes, merges only forms that reach the target identically,
and keeps apart anything that could behave differently (so an approval never widens)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.approvals.digest import DigestError, action_digest

SEGMENT = st.text(alphabet="abcdefgh0123456789-_.~", min_size=1, max_size=8).filter(
    lambda s: s.strip(".") != ""  # dot-only segments are refused (see below)
)
WORD = st.text(alphabet="abcxyz0123456789-_./=", min_size=1, max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def request(action: dict[str, Any], target: str = "t") -> dict[str, Any]:
    return {"agent": {"id": "a"}, "target": {"name": target}, "action": action}


def http(path: str, method: str = "GET") -> dict[str, Any]:
    return request({"http": {"method": method, "path": path}})


@settings(max_examples=150, deadline=None)
@given(value=st.recursive(JSON, lambda inner: st.dictionaries(st.sampled_from(
    ["agent", "target", "action", "http", "ssh", "sql", "mcp", "files", "method", "path",
     "command", "query", "tool", "arguments", "op", "name", "id"]), inner, max_size=4),
    max_leaves=12))  # fmt: skip
def test_never_crashes(value: Any) -> None:
    if not isinstance(value, dict):
        value = {"action": value}
    try:
        digest = action_digest(value)
    except DigestError:
        return
    assert len(digest.digest) == 64


@settings(max_examples=100, deadline=None)
@given(a=st.lists(SEGMENT, min_size=1, max_size=4), b=st.lists(SEGMENT, min_size=1, max_size=4))
def test_distinct_paths_distinct_digests(a: list[str], b: list[str]) -> None:
    first, second = action_digest(http("/" + "/".join(a))), action_digest(http("/" + "/".join(b)))
    assert (first.digest == second.digest) == (a == b)


@settings(max_examples=30, deadline=None)
@given(dots=st.integers(min_value=1, max_value=6), a=st.lists(SEGMENT, max_size=3))
def test_dot_only_segments_are_refused(dots: int, a: list[str]) -> None:
    with pytest.raises(DigestError):
        action_digest(http("/" + "/".join([*a, "." * dots])))


@settings(max_examples=100, deadline=None)
@given(words=st.lists(WORD, min_size=1, max_size=4), other=st.lists(WORD, min_size=1, max_size=4))
def test_commands_equal_exactly_when_their_words_are(words: list[str], other: list[str]) -> None:
    quoted = "cmd " + " ".join(f"'{w}'" for w in words)
    plain = "cmd " + " ".join(words)
    one = action_digest(request({"ssh": {"command": quoted}}))
    try:
        unquoted = action_digest(request({"ssh": {"command": plain}}))
    except DigestError:
        # The shell grammar refuses some bare words (``==``): refused, never a match.
        pass
    else:
        assert one.digest == unquoted.digest
    two = action_digest(request({"ssh": {"command": "cmd " + " ".join(f"'{w}'" for w in other)}}))
    assert (one.digest == two.digest) == (words == other)


@settings(max_examples=100, deadline=None)
@given(x=JSON, y=JSON)
def test_mcp_arguments_equal_exactly_when_equal_as_json(x: Any, y: Any) -> None:
    one = action_digest(request({"mcp": {"tool": "t", "arguments": {"v": x}}}))
    two = action_digest(request({"mcp": {"tool": "t", "arguments": {"v": y}}}))
    if one.digest == two.digest:
        assert one.canonical == two.canonical


def test_what_makes_actions_different() -> None:
    base = action_digest(http("/v1/a?x=1")).digest
    assert action_digest(http("/v1/a?x=2")).digest != base
    assert action_digest(http("/v1/a?x=1", "POST")).digest != base
    other_target = action_digest(request({"http": {"method": "GET", "path": "/v1/a?x=1"}}, "u"))
    assert other_target.digest != base
    override = request({"http": {"method": "POST", "path": "/v1/a?x=1",
                                 "headers": {"X-HTTP-Method-Override": "DELETE"}}})  # fmt: skip
    assert action_digest(override).canonical["methods"] == ["POST", "DELETE"]
    bound = action_digest(http("/v1/a?x=1"), body=b"{}", bind_body=True)
    assert bound.digest != base
    assert bound.digest != action_digest(http("/v1/a?x=1"), body=b"[]", bind_body=True).digest
    queries = ("select 1", "SELECT   1;", "SELECT 2", "SELECT 'a  b'", "SELECT 'a b'")
    sql = [action_digest(request({"sql": {"query": q}})).digest for q in queries]
    assert sql[0] == sql[1] and len(set(sql)) == 4
    one, float_one = ({"mcp": {"tool": "t", "arguments": {"n": n}}} for n in (1, 1.0))
    assert action_digest(request(one)).digest != action_digest(request(float_one)).digest
    for refused in ("/a/../b", "/a/%2e%2e/b", "//a"):
        with pytest.raises(DigestError):
            action_digest(http(refused))
    with pytest.raises(DigestError, match="shell-construct"):
        action_digest(request({"ssh": {"command": "rm $(ls)"}}))
