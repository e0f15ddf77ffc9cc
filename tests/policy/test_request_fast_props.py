"""The fast request path equals the full validator, for any input (hypothesis).

``request_fast.normalize`` must return a request equal to what ``request.normalize`` returns
(the CEL ``request`` view included), or raise the same error with the same reason and
detail. The strategies build well-formed requests and then break them in one or two places,
so that both the fast path and every hand-over to the full validator are exercised.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy import httpmatch, request_fast
from tether.policy import request as req
from tether.policy.errors import RequestError

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_FIELDS = [f for f in req.Request.__slots__ if f not in ("view_builder", "view")]


def outcome(normalize: Any, value: Any) -> tuple[str, Any]:
    try:
        request = normalize(value)
    except RequestError as error:
        return "error", (type(error), error.reason, error.detail)
    fields = {name: getattr(request, name) for name in _FIELDS}
    return "request", (fields, request.cel_view())


def assert_same(value: Any) -> None:
    slow = outcome(req.normalize, copy.deepcopy(value))
    fast = outcome(request_fast.normalize, copy.deepcopy(value))
    if slow[0] == "request" and fast[0] == "request":
        # `raw` is the value itself: compare it apart, as both got their own deep copy.
        assert slow[1][0].pop("raw") == fast[1][0].pop("raw")
    assert fast == slow


ODD = st.sampled_from(
    [None, 1, 1.5, True, "", "x", [], ["a"], {}, {"a": 1}, {"a": "b"}, "x" * 1100]
)
NAMES = st.sampled_from(["billing-bot", "svc-1", "a", "é", "x y"])
LABELS = st.dictionaries(
    st.sampled_from(["team", "env", "pci", 7]),
    st.sampled_from(["a", "b", "c", 1, None]),
    max_size=3,
)
METHODS = st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "get", "BREW", "G ET", "", "PATCH"])
PATHS = st.sampled_from(
    ["/v1/a", "/v1/a/7?x=1", "/", "/v1//a", "/v1/%2e%2e/a", "/a;b", "v1", "/a b", "/v1/a?#", "/é"]
)
ACTIONS = st.one_of(
    st.builds(lambda m, p: {"http": {"method": m, "path": p}}, METHODS, PATHS),
    st.builds(
        lambda m, p, h: {"http": {"method": m, "path": p, "headers": h}},
        METHODS,
        PATHS,
        st.sampled_from([{}, {"X-HTTP-Method-Override": "DELETE"}, {"x": 1}]),
    ),
    st.builds(lambda c: {"ssh": {"command": c}}, st.sampled_from(["ls -la", "a; b", "$(x)", ""])),
    st.builds(lambda q: {"sql": {"query": q}}, st.sampled_from(["SELECT 1", "SELEC", "DROP t"])),
    st.just({"mcp": {"tool": "t", "arguments": {"n": 1}}}),
    st.just({"files": {"op": "read", "path": "/srv/a"}}),
)
EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "runtime": st.one_of(st.builds(lambda n: {"id": n}, NAMES), ODD),
        "delegation": st.one_of(st.just({"user": "ann", "groups": ["ops"]}), ODD),
        "task": st.one_of(st.just({"id": "T-1", "purpose": "x"}), ODD),
        "scope": st.one_of(st.just({"targets": ["svc-*"]}), ODD),
        "source_ip": st.one_of(st.just("10.0.0.1"), ODD),
        "time": st.one_of(st.just("2026-01-29T10:00:00Z"), st.just("2026-01-29"), ODD),
        "approvals": st.one_of(st.just(["r1"]), ODD),
    },
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    value: dict[str, Any] = {
        "agent": {"id": draw(NAMES), "labels": draw(LABELS)},
        "target": {"name": draw(NAMES), "labels": draw(LABELS)},
        "action": draw(ACTIONS),
        **draw(EXTRAS),
    }
    for _ in range(draw(st.integers(0, 2))):  # break it somewhere
        where = draw(st.sampled_from(["agent", "target", "action", "top", "labels", "body"]))
        odd = draw(ODD)
        if where == "top":
            value[draw(st.sampled_from(["agent", "target", "action", "extra"]))] = odd
        elif where == "labels" and isinstance(value.get("agent"), dict):
            value["agent"]["labels"] = odd
        elif where == "body" and isinstance(value.get("action"), dict) and value["action"]:
            body = next(iter(value["action"].values()))
            if isinstance(body, dict):
                body[draw(st.sampled_from(["method", "path", "x", "query", "command"]))] = odd
        elif isinstance(value.get(where), dict):
            value[where][draw(st.sampled_from(["id", "name", "labels", "x"]))] = odd
    return value


@SETTINGS
@given(requests())
def test_fast_path_equals_full_validator(value: dict[str, Any]) -> None:
    assert_same(value)


@SETTINGS
@given(st.recursive(st.none() | st.text(max_size=4) | st.integers(), lambda inner: st.lists(
    inner, max_size=3) | st.dictionaries(st.sampled_from(["agent", "target", "action", "id",
    "name", "labels", "http", "method", "path", "sql", "query"]), inner, max_size=4),
    max_leaves=12))  # fmt: skip
def test_fast_path_equals_full_validator_on_any_json(value: Any) -> None:
    assert_same(value)


def test_common_methods_are_method_tokens() -> None:
    assert all(httpmatch.method_ok(m) for m in request_fast._COMMON_METHODS)


@pytest.mark.parametrize(
    "value",
    [
        {
            "agent": {"id": "a"},
            "target": {"name": "t"},
            "action": {"http": {"method": "GET", "path": "/v1/" + "a" * 9000}},
        },
        {
            "agent": {"id": "a"},
            "target": {"name": "t"},
            "action": {
                "http": {
                    "method": "GET",
                    "path": "/v1/a",
                    "headers": {"X-HTTP-Method-Override": "DELETE"},
                }
            },
        },
        {
            "agent": {"id": "a", "labels": None},
            "target": {"name": "t"},
            "action": {"http": {"method": "GET", "path": "/v1/a"}},
        },
        {
            "agent": {"id": "a"},
            "runtime": {"id": ""},
            "target": {"name": 7},
            "action": {"http": {"method": "GET", "path": "/v1/a"}},
        },
    ],
)
def test_fast_path_hand_overs(value: dict[str, Any]) -> None:
    assert_same(value)


def test_fast_path_serves_the_usual_shape_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the full validator was called")

    monkeypatch.setattr(req, "normalize", fail)
    request = request_fast.normalize(
        {
            "agent": {"id": "a", "labels": {"team": "x"}},
            "target": {"name": "t"},
            "action": {"http": {"method": "GET", "path": "/v1/a/7?q=1"}},
        }
    )
    assert request.parts[0].path.segments == ("v1", "a", "7")  # type: ignore[union-attr]
    assert request.cel_view()["http"]["query"] == "q=1"
