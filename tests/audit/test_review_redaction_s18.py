"""Probes of a red-team review: secrets that reached a stored audit event unredacted (a
comment or no blank between PASSWORD and its literal, an option named "password", an E''
literal with an escaped quote, every cookie of a Cookie line, a token as a URL's user)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.audit.conftest import AGENT, Trail
from tether.audit import store
from tether.audit.redact import Redactor


async def _stored_text(trail: Trail, seq: int) -> str:
    async with trail.engine.connect() as conn:
        (event,) = await store.events_after(conn, seq - 1, limit=1)
    return repr(dict(event.action)) + repr(dict(event.detail))


# SQL statements: PostgreSQL accepts a comment wherever white space goes, and a quoted
# identifier "password" as a generic option name; both leave the password literal in the trail.
@pytest.mark.parametrize(
    "query",
    [
        "ALTER ROLE app PASSWORD/**/'S3CRET-sql-1'",
        "ALTER ROLE app PASSWORD -- set it\n'S3CRET-sql-2'",
        "CREATE USER MAPPING FOR app SERVER s OPTIONS (\"password\" 'S3CRET-sql-3')",
    ],
)
async def test_sql_password_literal_reaches_the_trail(sqlite_trail: Trail, query: str) -> None:
    seq = await sqlite_trail.auditor.sql_statement(AGENT, target="db", query=query)
    assert "S3CRET" not in await _stored_text(sqlite_trail, seq)


async def test_sql_bound_password_parameter_after_a_comment(sqlite_trail: Trail) -> None:
    seq = await sqlite_trail.auditor.sql_statement(
        AGENT, target="db", query="ALTER ROLE app PASSWORD /* new */ $1", params=["S3CRET-param"]
    )
    assert "S3CRET" not in await _stored_text(sqlite_trail, seq)


# SSH commands: docs/audit.md promises "the literal after PASSWORD in any text, so
# psql -c "ALTER ROLE app PASSWORD '…'" in an SSH command too".
@pytest.mark.parametrize(
    "command",
    [
        "psql -c \"ALTER ROLE app PASSWORD'S3CRET-ssh-1'\"",  # no blank: valid SQL
        "psql -c \"ALTER ROLE app PASSWORD/**/'S3CRET-ssh-2'\"",
        "psql -c \"ALTER ROLE app PASSWORD E'ab\\\\'S3CRET-ssh-3'\"",  # E'' with \' inside
        # Cookie written in text: only the first cookie is hidden, the session id after ';' stays
        'curl -H "Cookie: theme=dark; sessionid=S3CRET-ssh-4" https://api',
        # a token as the URL's user name (GitHub/GitLab style): no ':' so nothing is hidden
        "git clone https://S3CRET-ssh-5@github.com/acme/repo.git",
    ],
)
async def test_command_secret_reaches_the_trail(sqlite_trail: Trail, command: str) -> None:
    seq = await sqlite_trail.auditor.command(AGENT, target="host", command=command)
    assert "S3CRET" not in await _stored_text(sqlite_trail, seq)


SECRETS = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=8, max_size=24)
GAPS = st.lists(st.sampled_from([" ", "\n", "\t", "/**/", "/* new */", "-- x\n"]), max_size=4)


@settings(max_examples=300, deadline=None)
@given(SECRETS, GAPS, st.sampled_from(["PASSWORD", "password", '"password"']),
       st.sampled_from(["'{}'", "E'{}'", "$${}$$", "$q${}$q$"]))  # fmt: skip
def test_no_gap_between_password_and_its_literal_keeps_it(
    secret: str, gap: list[str], keyword: str, literal: str
) -> None:
    """Whatever PostgreSQL reads as blanks between PASSWORD and its literal, as text (a
    command) or as SQL, the literal is redacted."""
    redactor = Redactor()
    query = f"ALTER ROLE app {keyword}{''.join(gap)}{literal.format(secret)}"
    if keyword == '"password"':
        query = f"CREATE USER MAPPING FOR app SERVER s OPTIONS ({keyword}{''.join(gap)}"
        query += f"{literal.format(secret)})"
    assert secret not in redactor.sql(query), query
    assert secret not in redactor.text(f'psql -c "{query}"'), query
