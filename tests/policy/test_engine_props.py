"""Properties of the whole decision (spec sections 4 and 5), with hypothesis.

* No input crashes ``decide``; every answer is a well-formed decision.
* Input that does not parse is always denied, with the parser's reason.
* Adding shell syntax to an allowed command never yields allow unless every
  command the target would run is itself allowed.
* A path that decodes into a denied subtree is never allowed, however encoded.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy import parse_command
from tether.policy.errors import AmbiguousPath, ShellConstruct, SqlParseError
from tether.policy.httpmatch import canonicalize_path
from tether.policy.model import DECISIONS, REASONS
from tether.policy.sql import analyze_sql

from .conftest import http_request, policies, request

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PS = policies(
    """
    rules:
      - id: web
        effect: allow
        http: {methods: ["*"], paths: ["/**"]}
      - id: no-admin
        effect: deny
        http: {methods: ["*"], paths: ["/admin/**", "/admin"]}
      - id: read-only
        effect: allow
        ssh: {commands: ["ls **", "cat /srv/*", "echo **", "grep **"]}
      - id: sql-read
        effect: allow
        sql: {statements: [select], tables: ["public.*"]}
      - id: sql-no-secrets
        effect: deny
        sql: {statements: ["*"], tables: ["public.secrets"]}
      - id: cond
        effect: allow
        mcp: {tools: ["*"]}
        when: 'request.mcp.arguments.n > 3'
    """
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(["agent", "target", "action", "id", "name", "http", "ssh", "sql", "mcp",
                         "files", "path", "method", "command", "query", "tool", "op", "labels",
                         "delegation", "user", "scope", "targets", "time", "arguments", "x"]),
        inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


def well_formed(d: Any) -> bool:
    return d.decision in DECISIONS and d.reason in REASONS and d.policy_version == PS.version


@SETTINGS
@given(json_values)
def test_random_json_never_crashes(value: Any) -> None:
    d = PS.decide(value)
    assert well_formed(d)
    assert d.detail is None or "internal error" not in d.detail


@SETTINGS
@given(st.text(max_size=80), st.sampled_from(["GET", "POST", "DELETE"]))
def test_random_paths(path: str, method: str) -> None:
    d = PS.decide(http_request(path, method))
    assert well_formed(d)
    try:
        canonical = canonicalize_path(path)
    except AmbiguousPath:
        assert (d.decision, d.reason) == ("deny", "ambiguous-path")
        return
    if canonical.segments and canonical.segments[0] == "admin":
        assert d.decision == "deny"


PATH_CHARS = st.sampled_from([*"admin/.;%\\2eEfF5cC0", "%2e", "%2f", "%61", "%5c", "..", "//"])


@SETTINGS
@given(st.lists(PATH_CHARS, min_size=1, max_size=16).map("".join))
def test_no_encoding_of_admin_is_allowed(tail: str) -> None:
    for path in ("/" + tail, "/admin" + tail, "/x/../" + tail, "/%61dmin/" + tail):
        d = PS.decide(http_request(path))
        assert well_formed(d)
        if d.decision == "allow":
            segments = canonicalize_path(path).segments
            assert segments[:1] != ("admin",), path
            assert all(s not in (".", "..") and "/" not in s and "\\" not in s for s in segments)


@SETTINGS
@given(st.text(max_size=60))
def test_random_commands(command: str) -> None:
    d = PS.decide(request("ssh", {"command": command}))
    assert well_formed(d)
    try:
        parsed = parse_command(command)
    except ShellConstruct:
        assert (d.decision, d.reason) == ("deny", "shell-construct")
        return
    if d.decision == "allow":
        assert all(c.argv[0] in {"ls", "cat", "echo", "grep"} for c in parsed.commands)


ALLOWED_COMMANDS = ["ls -la /srv", "cat /srv/app.log", "echo hello world", "grep -r x /srv"]
FRAGMENTS = [
    "; rm -rf /", " && rm -rf /", " || rm -rf /", " | sh", "\nrm -rf /", " $(rm -rf /)",
    " `rm -rf /`", " > /etc/passwd", " < /etc/shadow", " &", " ${IFS}rm", "$HOME", " *", " ~",
    "A=1 ", "(rm)", "{ rm; }", " <<EOF\nrm\nEOF", " $'\\x72m'", " <(rm)", "\\\nrm", " #", ";",
    "'", '"', "\\", " 2>&1", " 2>/dev/null", " | grep x", "; echo ok", " ; cat /srv/x",
]  # fmt: skip


@SETTINGS
@given(
    st.sampled_from(ALLOWED_COMMANDS),
    st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.integers(0, 40)), min_size=1, max_size=3),
)
def test_shell_syntax_never_sneaks_an_allow(base: str, inserts: list[tuple[str, int]]) -> None:
    command = base
    for fragment, at in inserts:
        at = min(at, len(command))
        command = command[:at] + fragment + command[at:]
    d = PS.decide(request("ssh", {"command": command}))
    assert well_formed(d)
    if d.decision != "allow":
        return
    parsed = parse_command(command)
    # Every simple command that would run is allowed on its own, and the canonical text
    # the broker sends parses back to exactly what was decided.
    assert parse_command(parsed.canonical()) == parsed
    for simple in parsed.commands:
        alone = PS.decide(request("ssh", {"command": simple.canonical()}))
        assert alone.decision == "allow", simple
        assert simple.argv[0] != "rm"


SQL_PIECES = [
    "SELECT", " * ", "FROM", " public.t", " secrets", " public.secrets", " WHERE", " 1=1", ";",
    " DELETE", " (", ")", " WITH x AS", " x", "'", "$$", " pg_read_file('a')", ",", " UNION",
    " INSERT INTO", " VALUES (1)", " --", "/*", "*/", " COPY", " TO STDOUT", " PROGRAM 'x'",
]  # fmt: skip


@SETTINGS
@given(st.lists(st.sampled_from(SQL_PIECES), min_size=1, max_size=12).map("".join))
def test_random_sql(query: str) -> None:
    d = PS.decide(request("sql", {"query": query}))
    assert well_formed(d)
    try:
        analysis = analyze_sql(query)
    except SqlParseError:
        assert (d.decision, d.reason) == ("deny", "sql-parse-error")
        return
    if d.decision == "allow":
        for statement in analysis.statements:
            assert statement.classes <= {"select"}
            assert "public.secrets" not in statement.relations
            assert not statement.forbidden_functions
            assert statement.forbidden is None


@SETTINGS
@given(st.text(alphabet=string.printable, max_size=40))
def test_unparseable_sql_is_denied(query: str) -> None:
    d = PS.decide(request("sql", {"query": query}))
    try:
        analyze_sql(query)
    except SqlParseError:
        assert (d.decision, d.reason) == ("deny", "sql-parse-error")
    else:
        assert d.reason != "sql-parse-error"


@SETTINGS
@given(json_values)
def test_cel_errors_never_allow(arguments: Any) -> None:
    d = PS.decide(request("mcp", {"tool": "t", "arguments": {"n": arguments}}))
    assert well_formed(d)
    if d.decision == "allow":
        assert isinstance(arguments, int | float) and not isinstance(arguments, bool)
        assert arguments > 3
