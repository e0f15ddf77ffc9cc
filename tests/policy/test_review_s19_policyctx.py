"""Review s19 (policy in use: context, delegation, reload): loading defects found by driving
the loader and the engine with hostile policy files and conditions."""

from __future__ import annotations

import time

import pytest

from tether.policy import PolicySource, load_policies
from tether.policy.errors import PolicyLoadError


def _load(text: str) -> None:
    load_policies([PolicySource("a.yaml", text)])


def _alias_bomb(levels: int) -> str:
    """A test request of ``10**levels`` strings in about 60 bytes per level."""
    lines = ["rules: []", "tests:", "  - name: t", "    expect: {decision: deny}", "    request:"]
    lines.append("      x0: &l0 [a, a, a, a, a, a, a, a, a, a]")
    for i in range(1, levels):
        aliases = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"      x{i}: &l{i} [{aliases}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_in_a_test_request_is_a_load_error_not_a_frozen_node() -> None:
    # 500 bytes expanded to 10**8 strings (38 s and gigabytes) in a reload thread; one
    # level more froze the node for minutes, then it ran out of memory.
    started = time.monotonic()
    with pytest.raises(PolicyLoadError, match=r"^a\.yaml:6: YAML aliases are not taken"):
        _load(_alias_bomb(8))
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "text",
    [
        "rules:\n  - &r {id: a, effect: allow, mcp: {tools: [x]}}\n  - <<: *r\n    id: b\n",
        "rules:\n  - id: a\n    effect: allow\n    mcp: {tools: &t [x]}\n"
        "  - id: b\n    effect: deny\n    mcp: {tools: *t}\n",
    ],
    ids=["merge-key", "alias"],
)
def test_aliases_and_merge_keys_are_load_errors(text: str) -> None:
    with pytest.raises(PolicyLoadError, match="YAML aliases are not taken"):
        _load(text)


@pytest.mark.parametrize("opening", ["[", "{a: "])
def test_a_deeply_nested_test_request_is_a_load_error_not_a_recursion_error(
    opening: str,
) -> None:
    # RecursionError escaped the loader: `tether policy check` exited 70 (internal error),
    # a node failed to start with a traceback, and a reload went unrecorded.
    closing = "]" if opening == "[" else "}"
    inner = "" if opening == "[" else "1"
    request = opening * 900 + inner + closing * 900
    text = (
        f"rules: []\ntests:\n  - name: t\n    expect: {{decision: deny}}\n    request: {request}\n"
    )
    with pytest.raises(PolicyLoadError, match=r"^a\.yaml: invalid YAML: nested too deeply"):
        _load(text)


@pytest.mark.parametrize(
    "when",
    [
        'time.getHours("America/New_York") >= 9',
        "time.getDayOfWeek('Europe/Paris') == 1",
        "time . getMinutes ( task.tz ) == 0",
    ],
)
def test_a_time_zone_argument_is_a_load_error_not_a_condition_that_always_errs(
    when: str,
) -> None:
    # The docs said the accessors read UTC "unless given a time zone", but the CEL engine
    # has no such overload: every evaluation erred, so an allow rule never matched and a
    # deny rule always did, silently.
    text = f"rules:\n  - id: r\n    effect: allow\n    mcp: {{tools: [x]}}\n    when: {when!r}\n"
    with pytest.raises(PolicyLoadError, match=r"with a time zone is not supported"):
        _load(text)


@pytest.mark.parametrize(
    "when",
    [
        "time.getHours() >= 9",
        'task.note == ".getHours(1)"',
        "task.note == r'\\\\' && (time + duration('1h')).getHours() < 17",
    ],
)
def test_utc_accessors_and_look_alikes_in_strings_still_load(when: str) -> None:
    _load(f"rules:\n  - id: r\n    effect: allow\n    mcp: {{tools: [x]}}\n    when: {when!r}\n")


def _at(time: str) -> dict[str, object]:
    return {
        "agent": {"id": "bot"},
        "target": {"name": "t"},
        "action": {"mcp": {"tool": "x", "arguments": {}}},
        "time": time,
    }


_DAYTIME = (
    "rules:\n  - id: day\n    effect: allow\n    mcp: {tools: [x]}\n"
    "    when: time.getHours() >= 9 && time.getHours() < 17\n"
)


@pytest.mark.parametrize(
    "time", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"], ids=["year-1", "year-9999"]
)
def test_a_time_leaving_the_calendar_in_utc_is_an_invalid_request_not_an_internal_error(
    time: str,
) -> None:
    decision = load_policies([PolicySource("a.yaml", _DAYTIME)]).decide(_at(time))
    assert (decision.decision, decision.reason) == ("deny", "invalid-request")
    assert decision.detail is not None and "internal error" not in decision.detail


@pytest.mark.parametrize(
    "time", ["2024-W09-4T10:00:00Z", "20240229T100000Z", "2024-02-29T10:00Z", "2024-060T10:00:00Z"]
)
def test_iso_8601_forms_that_are_not_rfc_3339_are_refused(time: str) -> None:
    # The docs (and the spec's example) say RFC 3339; fromisoformat read week dates, the
    # basic format and times without seconds too.
    decision = load_policies([PolicySource("a.yaml", _DAYTIME)]).decide(_at(time))
    assert (decision.decision, decision.reason) == ("deny", "invalid-request")


@pytest.mark.parametrize(
    ("time", "decision"),
    [
        ("2024-02-29t10:00:00z", "allow"),  # RFC 3339 5.6: "T" and "Z" may be lower case
        ("2024-02-29T16:59:59.999999-00:00", "allow"),
        ("2024-02-29T23:30:00+08:00", "allow"),  # 15:30 UTC
        ("2024-03-01T01:30:00+05:00", "deny"),  # 20:30 UTC, still the leap day
    ],
)
def test_rfc_3339_times_are_read_in_utc(time: str, decision: str) -> None:
    assert load_policies([PolicySource("a.yaml", _DAYTIME)]).decide(_at(time)).decision == decision


_OVERRIDES = """\
rules:
  - id: allow-all
    effect: allow
    http: {methods: ["*"], paths: ["/**"]}
  - id: deny-delete
    effect: deny
    http: {methods: ["*"], paths: ["/**"]}
    when: request.http.method == "DELETE"
  - id: deny-prod
    effect: deny
    http: {methods: ["*"], paths: ["/**"]}
    when: request.http.path.startsWith("/v1/prod") || request.http.query.contains("purge")
"""


def _http(method: str, path: str, headers: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "agent": {"id": "bot"},
        "target": {"name": "api"},
        "action": {"http": {"method": method, "path": path, "headers": headers or {}}},
    }


@pytest.mark.parametrize(
    ("method", "path", "headers", "rule"),
    [
        ("POST", "/v1/dev/x", {"X-HTTP-Method-Override": "DELETE"}, "deny-delete"),
        ("POST", "/v1/dev/x?_method=DELETE", {}, "deny-delete"),
        ("GET", "/v1/dev/x", {"X-Original-URL": "/v1/prod/x"}, "deny-prod"),
        ("GET", "/v1/dev/x", {"X-Rewrite-URL": "/v1/dev/x?purge=1"}, "deny-prod"),
    ],
    ids=["method-header", "method-parameter", "path-header", "query-of-path-header"],
)
def test_a_condition_sees_the_method_and_path_an_override_makes_the_target_run(
    method: str, path: str, headers: dict[str, str], rule: str
) -> None:
    # CEL saw the request line's method and path for every part: a POST overridden to
    # DELETE passed a deny rule on request.http.method == "DELETE" (allowed by allow-all),
    # and so did a path override past a deny rule reading request.http.path.
    decision = load_policies([PolicySource("a.yaml", _OVERRIDES)]).decide(
        _http(method, path, headers)
    )
    assert (decision.decision, decision.rule) == ("deny", rule)


_FILES = """\
rules:
  - id: allow-tmp-and-etc
    effect: allow
    files: {delete: ["/tmp/**"], write: ["/**"]}
  - id: deny-etc-writes
    effect: deny
    files: {write: ["/**"]}
    when: request.files.path.startsWith("/etc/")
"""


def test_a_condition_on_a_renames_write_sees_the_destination() -> None:
    # The write part of a rename (its destination) was decided with CEL's path set to the
    # source: a rename from /tmp into /etc passed a deny rule on writes under /etc.
    ps = load_policies([PolicySource("a.yaml", _FILES)])

    def files(body: dict[str, str]) -> dict[str, object]:
        return {"agent": {"id": "bot"}, "target": {"name": "h"}, "action": {"files": body}}

    assert ps.decide(files({"op": "write", "path": "/etc/cron.d/x"})).rule == "deny-etc-writes"
    renamed = ps.decide(files({"op": "rename", "path": "/tmp/x", "to": "/etc/cron.d/x"}))
    assert (renamed.decision, renamed.rule) == ("deny", "deny-etc-writes")
    moved = ps.decide(files({"op": "rename", "path": "/tmp/x", "to": "/srv/x"}))
    assert moved.decision == "allow"
