"""Spec section 5, end to end through ``decide``: every bypass class the spec lists.

The unit tests of each parser live beside it; these prove the engine turns each
bypass into the right deny reason, with an allow rule present that a naive
implementation would have matched.
"""

from __future__ import annotations

import pytest

from .conftest import http_request, policies, request

HTTP = policies(
    """
    rules:
      - id: public-read
        effect: allow
        http: {methods: [GET], paths: ["/public/**", "/v1/invoices/{id}"]}
      - id: admin-deny
        effect: deny
        http: {methods: ["*"], paths: ["/admin/**", "/admin"]}
    """
)


@pytest.mark.parametrize(
    "path",
    [
        "/public/../admin",
        "/public/./x",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/.%2e/admin",
        "/public%2Fadmin",
        "/public%2fadmin",
        "/public/%5Cadmin",
        "/public\\admin",
        "/public/..;/admin",
        "/public/x;jsessionid=1",
        "/public//admin",
        "//admin",
        "/public/%00",
        "/public/a%0Ab",
        "/public/\x01",
        "/public/%zz",
        "/public/%4",
        "public/x",
        "/public/x#frag",
    ],
)
def test_http_non_canonical_paths_are_ambiguous(path: str) -> None:
    d = HTTP.decide(http_request(path))
    assert (d.decision, d.reason) == ("deny", "ambiguous-path"), path


def test_http_canonical_paths_match() -> None:
    assert HTTP.decide(http_request("/public/a/b")).decision == "allow"
    assert HTTP.decide(http_request("/public/")).decision == "allow"
    assert HTTP.decide(http_request("/public/a%20b?x=1")).decision == "allow"
    assert HTTP.decide(http_request("/v1/invoices/7")).decision == "allow"
    assert HTTP.decide(http_request("/v1/invoices/7/lines")).reason == "default-deny"
    assert HTTP.decide(http_request("/admin/x")).reason == "denied-by-rule"


def test_http_methods_are_case_sensitive() -> None:
    assert HTTP.decide(http_request("/public/a", "get")).reason == "default-deny"


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "x-http-method", "X-METHOD-OVERRIDE"])
def test_http_method_override_must_be_allowed_too(header: str) -> None:
    d = HTTP.decide(http_request("/public/a", headers={header: "DELETE"}))
    assert (d.decision, d.reason) == ("deny", "default-deny")
    d = HTTP.decide(http_request("/public/a", headers={header: "GET"}))
    assert d.decision == "allow"


SSH = policies(
    """
    rules:
      - id: look
        effect: allow
        ssh: {commands: ["ls **", "cat /var/log/*", "grep **", "echo **", "rm -f /tmp/*"]}
      - id: no-shadow
        effect: deny
        ssh: {commands: ["cat /etc/shadow"]}
    """
)


@pytest.mark.parametrize(
    "command",
    [
        "ls $(rm -rf /)",
        "ls `id`",
        "ls <(id)",
        "echo $HOME",
        "echo ${IFS}",
        "echo $((1+1))",
        "ls *",
        "ls /var/log/?",
        "ls [a]",
        "echo {a,b}",
        "ls ~",
        "A=b ls",
        "ls > /etc/passwd",
        "ls >> /tmp/x",
        "cat < /etc/shadow",
        "cat <<EOF\nx\nEOF",
        "cat <<< x",
        "ls &",
        "(ls)",
        "{ ls; }",
        "if true; then ls; fi",
        "for i in a; do ls; done",
        "while true; do ls; done",
        "f() { ls; }",
        "echo $'\\x41'",
        "ls \x00",
        "ls \x1b[31m",
        "ls 'unterminated",
        "ls |& grep x",
        '"echo" "$(id)"',
    ],
)
def test_ssh_shell_constructs_are_denied(command: str) -> None:
    d = SSH.decide(request("ssh", {"command": command}))
    assert (d.decision, d.reason) == ("deny", "shell-construct"), command


@pytest.mark.parametrize(
    ("command", "decision", "reason"),
    [
        ("ls -la /var/log", "allow", "allowed"),
        ("ls -la | grep x", "allow", "allowed"),
        ("ls; rm -rf /", "deny", "default-deny"),
        ("ls && rm -rf /", "deny", "default-deny"),
        ("ls || rm -rf /", "deny", "default-deny"),
        ("ls | sh", "deny", "default-deny"),
        ("ls\nrm -rf /", "deny", "default-deny"),
        ("'cat' /etc/shadow", "deny", "denied-by-rule"),
        ("c\\at /etc/shadow", "deny", "denied-by-rule"),
        ('"cat" "/etc/shadow"', "deny", "denied-by-rule"),
        ("'r''m' -rf /", "deny", "default-deny"),
        ("echo '$(id)'", "allow", "allowed"),
        ("echo \\;", "allow", "allowed"),
        ("ls 2>&1", "allow", "allowed"),
        ("ls 2>/dev/null", "allow", "allowed"),
        ("cat /var/log/syslog", "allow", "allowed"),
        ("cat /var/log/../../etc/shadow", "deny", "denied-by-rule"),
        ("rm -f /tmp/../etc/passwd", "deny", "default-deny"),
        ("rm -f /tmp/x", "allow", "allowed"),
        ("/bin/ls", "deny", "default-deny"),
    ],
)
def test_ssh_parsed_words_are_what_is_matched(command: str, decision: str, reason: str) -> None:
    d = SSH.decide(request("ssh", {"command": command}))
    assert (d.decision, d.reason) == (decision, reason), command


def test_ssh_shell_and_forwards_are_off_unless_allowed() -> None:
    assert SSH.decide(request("ssh", {"shell": True})).reason == "default-deny"
    assert SSH.decide(request("ssh", {"forward": "db:5432"})).reason == "default-deny"
    ps = policies(
        "rules:\n  - id: s\n    effect: allow\n    ssh: {shell: true, forwards: ['db:5432']}\n"
    )
    assert ps.decide(request("ssh", {"shell": True})).decision == "allow"
    assert ps.decide(request("ssh", {"forward": "db:5432"})).decision == "allow"
    assert ps.decide(request("ssh", {"forward": "db:22"})).reason == "default-deny"
    assert ps.decide(request("ssh", {"command": "ls"})).reason == "default-deny"


SQL = policies(
    """
    rules:
      - id: read-billing
        effect: allow
        sql: {statements: [select], tables: ["billing.*", "public.*"]}
      - id: tx
        effect: allow
        sql: {statements: [transaction, set]}
      - id: no-users
        effect: deny
        sql: {statements: ["*"], tables: ["public.users"]}
      - id: admin-files
        effect: allow
        agents: [dba]
        sql: {statements: [select], functions: [pg_read_file]}
    """
)


@pytest.mark.parametrize(
    ("query", "decision", "reason"),
    [
        ("SELECT * FROM billing.invoices", "allow", "allowed"),
        ("SELECT 1", "allow", "allowed"),
        ("BEGIN; SELECT * FROM billing.invoices; COMMIT", "allow", "allowed"),
        ("SELECT * FROM billing.invoices; DELETE FROM billing.invoices", "deny", "default-deny"),
        ("WITH d AS (DELETE FROM billing.invoices RETURNING *) SELECT * FROM d",
         "deny", "default-deny"),
        ("SELECT * FROM users", "deny", "denied-by-rule"),
        ("SELECT * FROM billing.invoices i JOIN public.users u ON true", "deny", "denied-by-rule"),
        ("WITH users AS (SELECT 1) SELECT * FROM users", "allow", "allowed"),
        ("SELECT * FROM pg_shadow", "deny", "default-deny"),
        ("SELECT * FROM pg_catalog.pg_authid", "deny", "default-deny"),
        ("SELECT pg_read_file('/etc/passwd')", "deny", "sql-forbidden"),
        ("SELECT * FROM billing.invoices WHERE id IN (SELECT pg_read_file('x')::int)",
         "deny", "sql-forbidden"),
        ("SELECT pg_catalog.pg_read_file('/etc/passwd')", "deny", "sql-forbidden"),
        ("COPY billing.invoices TO PROGRAM 'sh -c id'", "deny", "sql-forbidden"),
        ("COPY billing.invoices FROM '/etc/passwd'", "deny", "sql-forbidden"),
        ("COPY billing.invoices TO STDOUT", "allow", "allowed"),
        ("DO $$ BEGIN PERFORM 1; END $$", "deny", "sql-forbidden"),
        ("EXECUTE p", "deny", "sql-forbidden"),
        ("LOAD 'x'", "deny", "sql-forbidden"),
        ("SELECT set_config('role', 'postgres', false)", "deny", "sql-forbidden"),
        ("SET ROLE postgres", "deny", "default-deny"),
        ("SET work_mem = '64MB'", "allow", "allowed"),
        ("SELECT * FROM billing.invoices FOR UPDATE", "deny", "default-deny"),
        ("SELEC 1", "deny", "sql-parse-error"),
        ("", "deny", "sql-parse-error"),
    ],
)  # fmt: skip
def test_sql_statements(query: str, decision: str, reason: str) -> None:
    d = SQL.decide(request("sql", {"query": query}))
    assert (d.decision, d.reason) == (decision, reason), query


def test_sql_forbidden_function_allowed_only_when_listed() -> None:
    d = SQL.decide(request("sql", {"query": "SELECT pg_read_file('/x')"}, agent="dba"))
    assert (d.decision, d.rule) == ("allow", "admin-files")
    d = SQL.decide(request("sql", {"query": "SELECT pg_ls_dir('/')"}, agent="dba"))
    assert d.reason == "sql-forbidden"


def test_sql_default_schema_is_configurable() -> None:
    req = request("sql", {"query": "SELECT * FROM invoices"})
    assert SQL.decide(req).decision == "allow"  # public.invoices
    assert SQL.decide(req, default_schema="billing").decision == "allow"
    assert SQL.decide(req, default_schema="hr").reason == "default-deny"


MCP_FILES = policies(
    """
    rules:
      - id: tools
        effect: allow
        mcp: {tools: ["search_*", get_weather], resources: ["file:///srv/docs/**"]}
      - id: no-delete-tool
        effect: deny
        mcp: {tools: ["*delete*"]}
      - id: files
        effect: allow
        files: {read: ["/srv/data/**"], list: ["/srv/data/**", "/srv/data"],
                write: ["/srv/data/out/*"], delete: ["/srv/data/out/*"]}
    """
)


@pytest.mark.parametrize(
    ("body", "decision", "reason"),
    [
        ({"tool": "search_docs", "arguments": {"q": "x"}}, "allow", "allowed"),
        ({"tool": "get_weather"}, "allow", "allowed"),
        ({"tool": "search_delete_all"}, "deny", "denied-by-rule"),
        ({"tool": "run_shell"}, "deny", "default-deny"),
        ({"resource": "file:///srv/docs/a/b.md"}, "allow", "allowed"),
        ({"resource": "file:///srv/docs/../../etc/passwd"}, "deny", "default-deny"),
        ({"resource": "file:///etc/passwd"}, "deny", "default-deny"),
    ],
)
def test_mcp(body: dict[str, object], decision: str, reason: str) -> None:
    d = MCP_FILES.decide(request("mcp", body))
    assert (d.decision, d.reason) == (decision, reason)


@pytest.mark.parametrize(
    ("body", "decision", "reason"),
    [
        ({"op": "read", "path": "/srv/data/a/b.csv"}, "allow", "allowed"),
        ({"op": "list", "path": "/srv/data"}, "allow", "allowed"),
        ({"op": "write", "path": "/srv/data/a.csv"}, "deny", "default-deny"),
        ({"op": "write", "path": "/srv/data/out/a.csv"}, "allow", "allowed"),
        ({"op": "rename", "path": "/srv/data/out/a", "to": "/srv/data/out/b"}, "allow", "allowed"),
        ({"op": "rename", "path": "/srv/data/a", "to": "/srv/data/out/b"}, "deny", "default-deny"),
        ({"op": "read", "path": "/srv/data/../../etc/shadow"}, "deny", "ambiguous-path"),
        ({"op": "read", "path": "srv/data/a"}, "deny", "ambiguous-path"),
        ({"op": "read", "path": "/srv//data/a"}, "deny", "ambiguous-path"),
        ({"op": "read", "path": "/srv/data/./a"}, "deny", "ambiguous-path"),
        ({"op": "read", "path": "/srv/data/a\x00b"}, "deny", "ambiguous-path"),
        ({"op": "rename", "path": "/srv/data/out/a", "to": "/srv/data/out/../../x"},
         "deny", "ambiguous-path"),
    ],
)  # fmt: skip
def test_files(body: dict[str, object], decision: str, reason: str) -> None:
    d = MCP_FILES.decide(request("files", body))
    assert (d.decision, d.reason) == (decision, reason), body


FOLDING = policies(
    """
    rules:
      - id: cat-anything
        effect: allow
        ssh: {commands: ["cat **", "tar --file=* **"]}
      - id: no-shadow
        effect: deny
        ssh: {commands: ["cat /etc/shadow", "tar --file=/etc/shadow **"]}
    """
)


@pytest.mark.parametrize(
    "command",
    [
        "cat /etc/shadow",
        "cat /etc/../etc/shadow",
        "cat /etc//shadow",
        "cat /./etc/shadow",
        "cat //etc/shadow",
        "cat /tmp/../../../etc/shadow",
        "cat /etc/shadow/.",
        "tar --file=/etc/./shadow -c",
    ],
)
def test_deny_rules_see_through_path_spellings(command: str) -> None:
    d = FOLDING.decide(request("ssh", {"command": command}))
    assert (d.decision, d.rule) == ("deny", "no-shadow"), command


def test_path_folding_only_widens_deny_rules() -> None:
    d = FOLDING.decide(request("ssh", {"command": "cat /etc/passwd"}))
    assert (d.decision, d.rule) == ("allow", "cat-anything")
    d = FOLDING.decide(request("ssh", {"command": "cat etc/../shadow"}))
    assert d.decision == "allow"  # relative: not the denied absolute path
