"""Secrets never land in events: property tests put a random secret where secrets hide
(SQL passwords in every quoting form, auth headers, sensitive JSON fields at any depth,
tokens and DPoP proofs in free text) and check that no string of the emitted event holds it,
in any form the serialisation could show it."""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tether.audit.canonical import GENESIS, canonical_bytes, event_json
from tether.audit.emit import Auditor, Subject
from tether.audit.events import AuditEvent
from tether.audit.redact import REDACTED, Redactor

WHO = Subject(agent="bot", runtime="rt", task="T-1", session_id="s-1", source_ip="10.0.0.1")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class CapturingLog:
    """Stands in for the AuditLog here (the real one is tested with real databases in
    test_emit.py): keeps each event as the store would receive it."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append_position(self, event: AuditEvent) -> tuple[int, str, str]:
        self.events.append(event)
        return len(self.events), GENESIS, "0" * 64


def emitted(call: Any, redactor: Redactor | None = None) -> AuditEvent:
    """Run one Auditor method (``call(auditor)``) and return the event it appended."""
    log = CapturingLog()
    auditor = Auditor(log, redactor)  # type: ignore[arg-type]
    asyncio.run(call(auditor))
    (event,) = log.events
    return event


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


MARKER = "\u2603" * 12  # stands for the secret in the baseline event


def _forms(secret: str) -> tuple[str, ...]:
    return (secret, json.dumps(secret, ensure_ascii=False)[1:-1], json.dumps(secret)[1:-1])


def _texts(event: AuditEvent) -> list[str]:
    return [
        *strings(event_json(event)),
        canonical_bytes(event, 1, GENESIS).decode(),
        json.dumps(event_json(event)),
    ]


def assert_absent(secret: str, build: Callable[[str], AuditEvent]) -> AuditEvent:
    """The event ``build(secret)`` holds the secret in no string, nor in its canonical bytes
    or its JSON (escaped or not). A secret that the same event built around a marker holds
    anyway (a field name, a word of the template) is not a secret: the example is skipped."""
    baseline = _texts(build(MARKER))
    assume(not any(form in text for form in _forms(secret) for text in baseline))
    event = build(secret)
    for text in _texts(event):
        for form in _forms(secret):
            assert form not in text, (secret, text)
    return event


secrets = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=12,
    max_size=40,
).filter(lambda s: len(set(s)) > 4)
urlsafe = st.text(string.ascii_letters + string.digits + "-._~", min_size=16, max_size=48)
b64url = st.text(string.ascii_letters + string.digits + "-_", min_size=8, max_size=60)
roles = st.sampled_from(["bob", '"Weird Role"', "app_user"])


def sql_literal(secret: str, form: str) -> str:
    if form == "standard":
        return "'" + secret.replace("'", "''") + "'"
    if form == "escape":
        return "E'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if form == "continued":
        half = len(secret) // 2
        return (
            "'"
            + secret[:half].replace("'", "''")
            + "'\n  '"
            + secret[half:].replace("'", "''")
            + "'"
        )
    tag = "$sec$" if "$sec" not in secret and not secret.endswith("$") else "$x9q$"
    return f"{tag}{secret}{tag}"


SQL_TEMPLATES = (
    "ALTER ROLE {role} PASSWORD {lit}",
    "alter user {role} with encrypted password {lit} valid until 'infinity'",
    "CREATE USER {role} PASSWORD {lit}",
    "CREATE ROLE {role} WITH LOGIN ENCRYPTED PASSWORD {lit} CONNECTION LIMIT 3",
    "SELECT 1; ALTER ROLE {role} PASSWORD {lit}; SELECT 2",
    "CREATE USER MAPPING FOR {role} SERVER s OPTIONS (user 'x', password {lit})",
)


@SETTINGS
@given(
    secret=secrets,
    template=st.sampled_from(SQL_TEMPLATES),
    form=st.sampled_from(["standard", "escape", "continued", "dollar"]),
    role=roles,
)
def test_sql_passwords_never_land_in_events(
    secret: str, template: str, form: str, role: str
) -> None:
    def query(s: str) -> str:
        return template.format(role=role, lit=sql_literal(s, form))

    event = assert_absent(
        secret, lambda s: emitted(lambda a: a.sql_statement(WHO, target="db", query=query(s)))
    )
    assert REDACTED in event.action["query"]
    verdict = {"decision": "deny", "rule": None, "reason": "default-deny", "policy_version": "v"}

    def decided(s: str) -> AuditEvent:
        request = {"agent": {"id": "bot"}, "target": {"name": "db"},
                   "action": {"sql": {"query": query(s)}}}  # fmt: skip
        return emitted(lambda a: a.decision(request, verdict))

    assert_absent(secret, decided)


@SETTINGS
@given(secret=secrets, number=st.integers(1, 3))
def test_a_bound_password_parameter_is_redacted(secret: str, number: int) -> None:
    query = f"ALTER ROLE bob PASSWORD ${number}"

    def build(s: str) -> AuditEvent:
        params = ["a", "b", "c"]
        params[number - 1] = s
        return emitted(lambda a: a.sql_statement(WHO, target="db", query=query, params=params))

    event = assert_absent(secret, build)
    assert event.action["params"][number - 1] == REDACTED


@SETTINGS
@given(secret=secrets)
def test_an_unterminated_password_literal_is_redacted_to_the_end(secret: str) -> None:
    def build(s: str) -> AuditEvent:
        query = "ALTER ROLE bob PASSWORD '" + s
        return emitted(lambda a: a.sql_statement(WHO, target="db", query=query))

    assert_absent(secret.replace("'", ""), build)


sensitive_headers = st.sampled_from(
    ["Authorization", "proxy-authorization", "COOKIE", "Set-Cookie", "DPoP", "X-Vault-Token",
     "X-Api-Key", "x-auth-token", "X-Company-Secret"]
)  # fmt: skip


@SETTINGS
@given(secret=secrets, name=sensitive_headers, as_pairs=st.booleans())
def test_sensitive_headers_never_land_in_events(secret: str, name: str, as_pairs: bool) -> None:
    redactor = Redactor.of(headers=["x-company-secret"])

    def exchange(s: str) -> AuditEvent:
        headers: Any = {name: s, "Accept": "application/json"}
        if as_pairs:
            headers = [(name, s), ("Accept", "application/json"), (name, s)]
        return emitted(
            lambda a: a.emit(a.http_exchange_event(
                WHO, target="api", method="GET", path="/v1/x", status=200,
                request_headers=headers, response_headers=headers,
            )),
            redactor,
        )  # fmt: skip

    assert_absent(secret, exchange)
    verdict = {"decision": "allow", "rule": "r", "reason": "allowed", "policy_version": "v"}

    def decided(s: str) -> AuditEvent:
        request = {
            "agent": {"id": "bot"},
            "target": {"name": "api"},
            "action": {"http": {"method": "GET", "path": "/", "headers": {name: s}}},
        }
        return emitted(lambda a: a.decision(request, verdict), redactor)

    assert_absent(secret, decided)


def test_a_configured_header_is_redacted_and_the_always_ones_cannot_be_removed() -> None:
    redactor = Redactor.of(headers=["X-Tenant"], fields=["pin"])
    assert redactor.headers({"X-Tenant": "t", "Authorization": "a", "Accept": "b"}) == {
        "X-Tenant": REDACTED, "Authorization": REDACTED, "Accept": "b"
    }  # fmt: skip
    assert redactor.json({"password": "p", "PIN_code": "1234"}) == {
        "password": "p", "PIN_code": REDACTED
    }  # fmt: skip


json_leaves = st.none() | st.booleans() | st.integers() | st.text(string.ascii_letters, max_size=8)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(string.ascii_lowercase, min_size=1, max_size=6), inner, max_size=3
        )
    ),
    max_leaves=12,
)
sensitive_keys = st.sampled_from(
    ["password", "Password", "db_password", "SECRET", "client_secret", "api_key", "apiKey",
     "API-KEY", "access_token", "refresh-token", "private_key", "dpop", "Authorization"]
)  # fmt: skip


def _bury(value: Any, key: str, secret: str, path: list[int]) -> Any:
    """``value`` with ``{key: secret}`` put at the depth ``path`` leads to."""
    if not path:
        return {"wrapper": value, key: secret}
    if isinstance(value, dict) and value:
        keys = sorted(value)
        chosen = keys[path[0] % len(keys)]
        return {**value, chosen: _bury(value[chosen], key, secret, path[1:])}
    if isinstance(value, list) and value:
        index = path[0] % len(value)
        return [*value[:index], _bury(value[index], key, secret, path[1:]), *value[index + 1 :]]
    return {"inner": value, key: secret}


@SETTINGS
@given(
    secret=secrets,
    key=sensitive_keys,
    value=json_values,
    path=st.lists(st.integers(0, 5), max_size=6),
    as_number=st.booleans(),
)
def test_sensitive_fields_at_any_depth_never_land_in_events(
    secret: str, key: str, value: Any, path: list[int], as_number: bool
) -> None:
    def call(s: str) -> AuditEvent:
        buried = _bury(value, key, s, path)
        return emitted(lambda a: a.mcp_call(WHO, target="tools", tool="t", arguments={"a": buried}))

    def detail(s: str) -> AuditEvent:
        buried = _bury(value, key, s, path)
        return emitted(
            lambda a: a.session_start(WHO, protocol="mcp", target="t", detail={"d": buried})
        )

    assert_absent(secret, call)
    assert_absent(secret, detail)
    if as_number:
        numbered = _bury(value, key, 987654321987, path)
        event = emitted(lambda a: a.mcp_call(WHO, target="t", tool="t", arguments=numbered))
        assert "987654321987" not in json.dumps(event_json(event))


def jwts() -> st.SearchStrategy[str]:
    segment = st.text(string.ascii_letters + string.digits + "-_", min_size=10, max_size=80)
    return st.builds(lambda a, b, c: f"eyJ{a}.eyJ{b}.{c}", segment, segment, segment)


def tether_tokens() -> st.SearchStrategy[tuple[str, str]]:
    """(whole token, its secret part): admin and join tokens."""
    return st.builds(
        lambda prefix, ident, secret: (f"{prefix}{ident}.{secret}", secret),
        st.sampled_from(["tat_", "tjt_"]),
        st.text(string.ascii_lowercase + string.digits, min_size=4, max_size=16),
        st.text(string.ascii_letters + string.digits + "-_", min_size=20, max_size=43),
    )


def in_text(token: str) -> st.SearchStrategy[str]:
    words = st.text(string.ascii_letters + " ,.!", max_size=20)
    return st.builds(lambda before, after: f"{before} {token} {after}", words, words)


@SETTINGS
@given(data=st.data(), jwt=jwts(), tether=tether_tokens(), bearer=b64url, secret=urlsafe)
def test_tokens_and_proofs_in_any_field_never_land_in_events(
    data: st.DataObject, jwt: str, tether: tuple[str, str], bearer: str, secret: str
) -> None:
    cases = [
        (jwt, jwt),
        (f"Authorization: Bearer {bearer}", bearer),
        (f"DPoP {jwt}", jwt),
        (tether[0], tether[1]),
        (f"postgres://app:{secret}@db.internal:5432/x", secret),
        (f"/v1/items?access_token={secret}&page=2", secret),
        (f"PGPASSWORD={secret} psql -h db", secret),
        (f"vault login --token {secret}", secret),
        (f'{{"client_secret": "{secret}"}}', secret),
    ]
    for shown, hidden in cases:
        text = data.draw(in_text(shown))
        # The words drawn around the token must not repeat the secret outside its shape.
        assume(text.count(hidden) == shown.count(hidden))
        place = data.draw(st.sampled_from(["target", "reason", "path", "command", "detail", "sql"]))

        def build(s: str, text: str = text, place: str = place, hidden: str = hidden) -> AuditEvent:
            placed = text.replace(hidden, s)
            return emitted(lambda a: _emit_with_text(a, place, placed))

        assert_absent(hidden, build)


async def _emit_with_text(auditor: Auditor, place: str, text: str) -> int:
    if place == "target":
        return await auditor.session_start(WHO, protocol="ssh", target=text)
    if place == "reason":
        return await auditor.token_refused(WHO, reason=text)
    if place == "path":
        return await auditor.file_transfer(WHO, target="h", op="read", path=text)
    if place == "command":
        return await auditor.command(WHO, target="h", command=text)
    if place == "sql":
        return await auditor.sql_statement(WHO, target="db", query=f"SELECT 1 -- {text}")
    return await auditor.emit(AuditEvent(kind="approval", detail={"note": [text]}, reason=text))


def test_redaction_keeps_what_is_not_secret() -> None:
    redactor = Redactor()
    assert redactor.text("GET /v1/invoices/7?expand=lines") == "GET /v1/invoices/7?expand=lines"
    assert redactor.sql("SELECT * FROM t WHERE name = 'alice'") == (
        "SELECT * FROM t WHERE name = 'alice'"
    )
    assert redactor.sql("ALTER ROLE bob PASSWORD 'x' VALID UNTIL '2030-01-01'") == (
        "ALTER ROLE bob PASSWORD '[REDACTED]' VALID UNTIL '2030-01-01'"
    )
    assert redactor.sql("SET search_path = 'app'") == "SET search_path = 'app'"
    # Over-redaction, by design: a sensitive-looking name hides its value.
    assert redactor.sql("SET password_encryption = 'scram-sha-256'") == (
        "SET password_encryption = '[REDACTED]'"
    )
    assert redactor.text("tat_0a1b2c.s3cr3tS3CR3Ts3cr3t") == "tat_0a1b2c.[REDACTED]"
    assert redactor.text("ssh://deploy@host:22") == "ssh://deploy@host:22"
    assert redactor.json({"user": "bob", "password": None}) == {"user": "bob", "password": None}


# Strings made of the characters and fragments secrets are recognised by, so that the
# pre-check is exercised around every mark, not only on clean text.
_FRAGMENTS = st.sampled_from(
    ["eyJ", "-----BEGIN", "Bearer", "bearer", "DPoP", "dpop", "Basic", "tat_", "tjt_", ":",
     "=", "-", " ", "\t", "\u2003", "e", "y", "J", "t_", "a", "x", "/", "é", "\x00", "curl",
     "mysql", "--user", "'", "-p", "-u"]
)  # fmt: skip
_SHAPED_TEXT = st.one_of(st.text(max_size=40), st.lists(_FRAGMENTS, max_size=12).map("".join))


@settings(max_examples=400, deadline=None)
@given(value=_SHAPED_TEXT)
def test_the_fast_pre_check_never_skips_a_string_the_pattern_would_redact(value: str) -> None:
    from tether.audit.redact import _MAY_HOLD_SHAPE, _SHAPES, _has_mark, may_hold_shape
    from tether.audit.redact_commands import has_mark, redact_commands

    commands = _has_mark(value) and has_mark(value)
    assert may_hold_shape(value) == (_MAY_HOLD_SHAPE.search(value) is not None or commands)
    if not may_hold_shape(value):
        assert _SHAPES.search(value) is None
        assert redact_commands(value, REDACTED) == value
        assert Redactor().text(value) == value


@settings(max_examples=300, deadline=None)
@given(value=_SHAPED_TEXT)
def test_the_written_out_marks_are_the_listed_marks(value: str) -> None:
    from tether.audit.redact import _SHAPE_MARKS, _has_mark

    assert _has_mark(value) == any(mark in value for mark in _SHAPE_MARKS)


def test_an_action_cleaned_by_this_redactor_is_appended_as_is_and_another_is_cleaned() -> None:
    """A front-end may clean an action once and reuse it (the PostgreSQL broker, per
    statement shape): ``emit`` then appends the very event, without walking it again; an
    action cleaned by another redactor (other sensitive names) is cleaned again."""
    mine = Redactor.of(fields=("ticket",))
    other = Redactor.of(fields=("code",))
    raw = {"query": "SELECT 1", "ticket": "T-9", "code": "1234"}
    cleaned = mine.event_json(raw, "action")
    assert dict(cleaned) == {"query": "SELECT 1", "ticket": REDACTED, "code": "1234"}
    assert mine.event_json(cleaned, "action") is cleaned
    event = AuditEvent(kind="sql.statement", agent="bot", target="db", action=cleaned)

    async def emit_with(auditor: Auditor) -> None:
        await auditor.emit(event)

    assert emitted(emit_with, mine) is event
    again = emitted(emit_with, other)
    assert again is not event
    assert dict(again.action) == {"query": "SELECT 1", "ticket": REDACTED, "code": REDACTED}
