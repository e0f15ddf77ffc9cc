"""Review s19: the compiled, indexed engine against a slow reference written from the spec,
for HTTP, files and SQL requests (the older differential test covers MCP and SSH), with
delegation, approvals and time-based conditions.

The reference reads every rule for every request and matches actions with its own code:
HTTP path patterns segment by segment (spec 5.1), file globs as regular expressions (5.5),
SQL tables with "allow covers all, deny touches any" (policy-language.md). It shares with
the engine only the request validation (the normalised parts, and for SQL PostgreSQL's
parse into classes and relations). Conditions are evaluated by Python functions written for
each one, so a ``time`` written with an offset, a window across midnight or a missing field
is checked independently of the CEL engine (errors: an allow misses, a deny hits).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy import PolicySet
from tether.policy import request as req

from .conftest import policies

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLOCK = datetime(2024, 2, 29, 23, 30, tzinfo=UTC)  # a leap day, late evening (UTC)

AGENTS = ["bot", "bot-2", "billing"]
AGENT_GLOBS = ["bot*", "*-2", "*"]
USERS = ["alice", "bob"]
GROUPS = ["sre", "finance"]
TARGETS = ["api", "api-2", "db"]


class _Err(Exception):
    """A condition that errs at run time (a missing field, a wrong type)."""


def _task(r: Mapping[str, Any]) -> Mapping[str, Any]:
    return r.get("task") or {}


def _utc(r: Mapping[str, Any]) -> datetime:
    time = r.get("time")
    return CLOCK if time is None else datetime.fromisoformat(time).astimezone(UTC)


def _purpose(r: Mapping[str, Any]) -> bool:
    if "purpose" not in _task(r):
        raise _Err
    return bool(_task(r)["purpose"] == "close")


def _http_query(r: Mapping[str, Any]) -> bool:
    if "http" not in r["action"]:
        raise _Err
    return "debug" in r["action"]["http"]["path"].partition("?")[2]


def _delegated_alice(r: Mapping[str, Any]) -> bool:
    if "delegation" not in r:
        raise _Err
    return bool(r["delegation"]["user"] == "alice")


# CEL source -> the same condition in Python over the raw request.
WHENS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "time.getHours() >= 22 || time.getHours() < 6": lambda r: not 6 <= _utc(r).hour < 22,
    "time.getDayOfWeek() == 4": lambda r: _utc(r).isoweekday() % 7 == 4,
    "time.getMonth() == 1 && time.getDate() == 29": lambda r: (
        (_utc(r).month, _utc(r).day) == (2, 29)
    ),
    'task.purpose == "close"': _purpose,
    "has(task.purpose)": lambda r: "purpose" in _task(r),
    'request.http.query.contains("debug")': _http_query,
    'delegation.user == "alice"': _delegated_alice,
}
TIMES = [
    None,
    "2024-02-29T23:30:00Z",
    "2024-03-01T01:30:00+05:00",  # 20:30 UTC on the leap day
    "2024-03-10T06:59:59-05:00",  # 11:59:59 UTC, a Sunday (DST starts that day in the US)
    "2023-12-31T23:59:59.999Z",
    "2024-03-01T00:00:00+00:00",
    "2024-02-29T21:59:59-00:30",  # 22:29:59 UTC
]

HTTP_PATTERNS = [
    "/v1/invoices/{id}",
    "/v1/invoices/*",
    "/v1/**",
    "/v1/inv-*/x",
    "/v1",
    "/v1/",
    "/",
    "/**",
    "/a b/**",
    "/v2/*/x/**",
    "/**/x",
    "/admin/users",
]
HTTP_PATHS = [
    "/v1/invoices/7",
    "/v1/invoices/",
    "/v1/invoices",
    "/v1",
    "/v1/",
    "/",
    "/v1/inv-/x",
    "/v1/inv-9/x",
    "/a%20b/c",
    "/a%20b",
    "/v2/q/x",
    "/v2/q/x/y/z",
    "/x",
    "/admin/users",
    "/admin/users/",
    "/Admin/users",
    "/v1/invoices/7?debug=1",
]
METHODS = ["GET", "POST", "get"]
FILE_GLOBS = ["/data/**", "/data/*.csv", "/home/*/notes", "/**", "/data/a?.csv", "/etc/shadow"]
FILE_PATHS = [
    "/data/a.csv",
    "/data/ab.csv",
    "/data/x/a.csv",
    "/home/ann/notes",
    "/home/ann/x/notes",
    "/etc/shadow",
    "/data",
]
FILE_OPS = ["read", "list", "write", "delete"]
SQL_TABLES = ["public.*", "*.*", "billing.invoices", "billing.*", "public.a", "pub*.a"]
SQL_CLASSES = ["select", "insert", "update", "delete", "ddl", "transaction", "*"]
SQL_QUERIES = [
    "SELECT * FROM a",
    "SELECT * FROM billing.invoices",
    "DELETE FROM billing.invoices",
    "SELECT 1",
    "BEGIN; SELECT * FROM a; COMMIT",
    "INSERT INTO billing.invoices SELECT * FROM a",
    "WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d",
    "UPDATE public.a SET x = 1",
    "DROP TABLE billing.invoices",
    'SELECT * FROM "pub.x".a',
    "SELECT * FROM a FOR UPDATE",
]


def _names(draw: st.DrawFn, pool: list[str]) -> list[str]:
    return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))


@st.composite
def rules(draw: st.DrawFn, index: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": f"r{index}", "effect": draw(st.sampled_from(["allow", "deny"]))}
    subject = draw(st.sampled_from(["none", "agents", "agents", "users", "groups"]))
    if subject == "agents":
        if draw(st.booleans()):
            rule["agents"] = _names(draw, AGENTS + AGENT_GLOBS)
        else:
            rule["agents"] = {"labels": {"team": draw(st.sampled_from(["red", "*", ["red", "b"]]))}}
    elif subject == "users":
        rule["users"] = _names(draw, [*USERS, "a*"])
    elif subject == "groups":
        rule["groups"] = _names(draw, GROUPS)
    if draw(st.integers(0, 2)) == 0:
        rule["targets"] = _names(draw, [*TARGETS, "api*", "*"])
    obo = draw(st.sampled_from([None, None, "none", "any", "users"]))
    if obo == "users":
        rule["on_behalf_of"] = {"users": _names(draw, USERS)}
    elif obo is not None:
        rule["on_behalf_of"] = obo
    kind = draw(st.sampled_from(["http", "http", "files", "sql"]))
    if kind == "http":
        methods = draw(st.lists(st.sampled_from(["GET", "POST", "*"]), min_size=1, max_size=2))
        rule["http"] = {"methods": methods, "paths": _names(draw, HTTP_PATTERNS)}
    elif kind == "files":
        ops = draw(st.lists(st.sampled_from(FILE_OPS), min_size=1, max_size=2, unique=True))
        rule["files"] = {op: _names(draw, FILE_GLOBS) for op in ops}
    else:
        rule["sql"] = {"statements": _names(draw, SQL_CLASSES)}
        if draw(st.booleans()):
            rule["sql"]["tables"] = _names(draw, SQL_TABLES)
    if draw(st.integers(0, 2)) == 0:
        rule["when"] = draw(st.sampled_from(sorted(WHENS)))
    if rule["effect"] == "allow" and draw(st.integers(0, 3)) == 0:
        rule["approval"] = {"approvers": ["owner"]}
    return rule


@st.composite
def requests(draw: st.DrawFn, rule_count: int) -> dict[str, Any]:
    value: dict[str, Any] = {
        "agent": {"id": draw(st.sampled_from([*AGENTS, "x"]))},
        "target": {"name": draw(st.sampled_from(TARGETS))},
    }
    if draw(st.booleans()):
        value["agent"]["labels"] = {"team": draw(st.sampled_from(["red", "b", "c"]))}
    if draw(st.booleans()):
        groups = draw(st.lists(st.sampled_from(GROUPS), max_size=2, unique=True))
        value["delegation"] = {"user": draw(st.sampled_from([*USERS, "carol"])), "groups": groups}
    if draw(st.booleans()):
        value["approvals"] = [f"r{i}" for i in range(rule_count) if draw(st.booleans())]
    time = draw(st.sampled_from(TIMES))
    if time is not None:
        value["time"] = time
    if draw(st.booleans()):
        value["task"] = draw(st.sampled_from([{}, {"purpose": "close"}, {"purpose": 1}]))
    kind = draw(st.sampled_from(["http", "http", "files", "sql"]))
    if kind == "http":
        path = draw(st.sampled_from(HTTP_PATHS))
        value["action"] = {"http": {"method": draw(st.sampled_from(METHODS)), "path": path}}
    elif kind == "files":
        op = draw(st.sampled_from([*FILE_OPS, "rename"]))
        files = {"op": op, "path": draw(st.sampled_from(FILE_PATHS))}
        if op == "rename":
            files["to"] = draw(st.sampled_from(FILE_PATHS))
        value["action"] = {"files": files}
    else:
        value["action"] = {"sql": {"query": draw(st.sampled_from(SQL_QUERIES))}}
    return value


# --- the reference -----------------------------------------------------------------------------


def _glob(pattern: str, name: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name, re.DOTALL) is not None


def _any_name(patterns: list[str], name: str) -> bool:
    return any(_glob(p, name) for p in patterns)


def _segments_match(pattern: list[str], segments: list[str]) -> bool:
    """Spec 5.1, one segment at a time; ``**`` tries every split."""
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_segments_match(rest, segments[i:]) for i in range(len(segments) + 1))
    if not segments:
        return False
    segment = segments[0]
    if head == "*" or head.startswith("{"):
        ok = segment != ""
    elif "*" in head:
        ok = _glob(head, segment)
    else:
        ok = head == segment
    return ok and _segments_match(rest, segments[1:])


def _http_hit(block: Mapping[str, Any], method: str, path: str) -> bool:
    if method not in block["methods"] and "*" not in block["methods"]:
        return False
    decoded = path.partition("?")[0].replace("%20", " ")
    segments = decoded[1:].split("/")
    return any(_segments_match(p[1:].split("/"), segments) for p in block["paths"])


def _file_glob(pattern: str, path: str) -> bool:
    """Spec 5.5 (as 5.2): ``*`` and ``?`` within a segment, ``**`` across; a whole-segment
    ``**`` matches zero or more segments (globs.py: ``/data/**`` covers ``/data`` too)."""
    regex = ""
    for segment in pattern.split("/")[1:]:
        if segment == "**":
            regex += "(?:/.*)?"
            continue
        regex += "/"
        for token in re.split(r"(\*\*|\*|\?)", segment):
            regex += {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.fullmatch(regex, path) is not None


def _table_hit(pattern: str, relation: str, deny: bool) -> bool:
    star = ".*" if deny else "[^.]*"
    return re.fullmatch(star.join(map(re.escape, pattern.split("*"))), relation) is not None


def _sql_hit(block: Mapping[str, Any], statement: Any, deny: bool) -> bool:
    classes = None if "*" in block["statements"] else set(block["statements"])
    tables = block.get("tables")
    if deny:
        if classes is not None and not statement.classes & classes:
            return False
        return tables is None or any(
            _table_hit(t, r, True) for r in statement.relations for t in tables
        )
    if classes is not None and not statement.classes <= classes:
        return False
    return all(any(_table_hit(t, r, False) for t in tables or ()) for r in statement.relations)


def _action_hit(src: Mapping[str, Any], r: Mapping[str, Any], part: req.Part, deny: bool) -> bool:
    if isinstance(part, req.HttpPart):  # the only part: no override header or parameter
        http = r["action"]["http"]
        return "http" in src and _http_hit(src["http"], http["method"], http["path"])
    if isinstance(part, req.FilesPart):
        globs = src.get("files", {}).get(part.op, [])
        return any(_file_glob(g, part.path) for g in globs)
    assert isinstance(part, req.SqlPart)
    return "sql" in src and _sql_hit(src["sql"], part.statement, deny)


def _subject(src: Mapping[str, Any], human: bool, who: str, r: Mapping[str, Any]) -> bool:
    humans = "users" in src or "groups" in src
    if not human:
        if humans:
            return False
        agents = src.get("agents")
        if agents is None:
            return True
        if isinstance(agents, list):
            return _any_name(agents, who)
        labels = r["agent"].get("labels", {})
        want = agents["labels"]["team"]
        if "team" not in labels:
            return False
        return want == "*" or labels["team"] in (want if isinstance(want, list) else [want])
    if "agents" in src:
        return False
    if not humans:
        return True
    groups = r["delegation"]["groups"]
    return _any_name(src.get("users", []), who) or any(
        _any_name(src.get("groups", []), g) for g in groups
    )


def _context_hit(src: Mapping[str, Any], r: Mapping[str, Any]) -> bool:
    if "targets" in src and not _any_name(src["targets"], r["target"]["name"]):
        return False
    obo = src.get("on_behalf_of", "any")
    delegation = r.get("delegation")
    if obo == "any":
        return True
    if obo == "none":
        return delegation is None
    return delegation is not None and _any_name(obo["users"], delegation["user"])


def _when_hit(src: Mapping[str, Any], r: Mapping[str, Any], deny: bool) -> bool:
    if "when" not in src:
        return True
    try:
        return WHENS[src["when"]](r)
    except _Err:
        return deny


Verdict = tuple[str, str | None, str]
_SEVERITY = {"allow": 0, "approval_required": 1, "deny": 2}


def _part(ps: PolicySet, r: Mapping[str, Any], part: req.Part, human: bool) -> Verdict:
    who = r["delegation"]["user"] if human else r["agent"]["id"]
    matched = []
    for rule in ps.rules:
        src = rule.source
        deny = src["effect"] == "deny"
        if (
            _subject(src, human, who, r)
            and _context_hit(src, r)
            and _action_hit(src, r, part, deny)
            and _when_hit(src, r, deny)
        ):
            matched.append(src)
    for src in matched:
        if src["effect"] == "deny":
            return ("deny", src["id"], "denied-by-rule")
    for src in matched:
        if "approval" not in src or src["id"] in r.get("approvals", []):
            return ("allow", src["id"], "allowed")
    for src in matched:
        return ("approval_required", src["id"], "approval-needed")
    return ("deny", None, "default-deny")


def _pass(ps: PolicySet, r: Mapping[str, Any], parts: tuple[req.Part, ...], human: bool) -> Verdict:
    result: Verdict | None = None
    for part in parts:
        verdict = _part(ps, r, part, human)
        if result is None or _SEVERITY[verdict[0]] > _SEVERITY[result[0]]:
            result = verdict
    assert result is not None
    return result


def reference(ps: PolicySet, r: Mapping[str, Any]) -> Verdict:
    request = ps.normalize(r)  # shared: validation, the parts, SQL's parse
    agent = _pass(ps, r, request.parts, human=False)
    if "delegation" not in r or agent[0] == "deny":
        return agent
    user = _pass(ps, r, request.parts, human=True)
    if user[0] != "allow":
        return ("deny", user[1] if user[0] == "deny" else None, "delegation-denied")
    return agent


@SETTINGS
@given(st.data())
def test_engine_decides_like_a_reference_written_from_the_spec(data: st.DataObject) -> None:
    rule_list = [data.draw(rules(i)) for i in range(data.draw(st.integers(2, 10)))]
    text = "rules:\n" + "".join(f"  - {json.dumps(rule)}\n" for rule in rule_list)
    ps = policies(text)
    ps.clock = lambda: CLOCK
    for _ in range(5):
        value = data.draw(requests(len(rule_list)))
        got = ps.decide(value)
        assert got.reason != "invalid-request", (got, value)
        expected = reference(ps, value)
        assert (got.decision, got.rule, got.reason) == expected, (rule_list, value)


# --- overrides: a request never gets more than the actions it makes the target run -----------

_OVERRIDE_WHENS = [
    'request.http.method == "DELETE"',
    'request.http.method != "GET"',
    'request.http.path.startsWith("/admin")',
    'request.http.query.contains("force")',
    "has(request.http.params.id)",
]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["allow", "deny"]),
            st.sampled_from(["GET", "POST", "DELETE", "*"]),
            st.sampled_from(["/**", "/admin/**", "/v1/{id}", "/v1/*"]),
            st.sampled_from([None, *_OVERRIDE_WHENS]),
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["/v1/7", "/v1/7?force=1", "/admin/x"]),
    st.sampled_from([None, "DELETE", "PUT", "GET"]),
    st.sampled_from([None, "/admin/users", "/v1/8?force=1", "/v1/9"]),
)
def test_an_override_never_allows_what_the_overriding_action_is_denied(
    spec: list[tuple[str, str, str, str | None]],
    method: str,
    path: str,
    override_method: str | None,
    override_path: str | None,
) -> None:
    rule_list: list[dict[str, Any]] = []
    for index, (effect, rule_method, pattern, when) in enumerate(spec):
        rule: dict[str, Any] = {
            "id": f"r{index}",
            "effect": effect,
            "http": {"methods": [rule_method], "paths": [pattern]},
        }
        if when is not None:
            rule["when"] = when
        rule_list.append(rule)
    ps = policies("rules:\n" + "".join(f"  - {json.dumps(rule)}\n" for rule in rule_list))
    headers: dict[str, str] = {}
    if override_method is not None:
        headers["X-HTTP-Method-Override"] = override_method
    if override_path is not None:
        headers["X-Original-URL"] = override_path
    action = {"http": {"method": method, "path": path, "headers": headers}}
    combined = ps.decide({"agent": {"id": "bot"}, "target": {"name": "api"}, "action": action})
    for run_method in {method, override_method or method}:
        for run_path in {path, override_path or path}:
            direct = {"http": {"method": run_method, "path": run_path}}
            alone = ps.decide({"agent": {"id": "bot"}, "target": {"name": "api"}, "action": direct})
            if alone.decision == "deny":
                assert combined.decision == "deny", (rule_list, action, run_method, run_path)
            elif alone.decision == "approval_required":
                assert combined.decision != "allow", (rule_list, action, run_method, run_path)
