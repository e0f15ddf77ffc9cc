"""Review probes of the trail's tamper evidence and of what an event may hold.

Each test names a way to change what the trail says, or to lose events, that an earlier
version let through: a column rewritten into another text of the same parsed value (verify
hashed the parsed value, not what is stored, so the rewrite verified while raw SQL, the time
index and ``search --since/--until`` saw something else), a public key added to the same
database that the checkpoints are checked against, a count too large for the column, and
``-0.0``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import timedelta

import pytest
from sqlalchemy import insert

from tests.audit.conftest import (
    MASTER,
    NO_HEAD_FILE,
    Trail,
    problems,
    sample,
    store_signing_key,
)
from tether.audit import store
from tether.audit.canonical import event_hash
from tether.audit.checkpoints import sign_checkpoint, verification_keys
from tether.audit.events import AuditEvent, EventError
from tether.audit.log import AuditUnavailable
from tether.audit.schema import audit_checkpoints, audit_events
from tether.audit.verify import verify_trail
from tether.identity.keys import SigningKey


async def stored(trail: Trail, seq: int) -> AuditEvent:
    async with trail.engine.connect() as conn:
        (found,) = await store.events_after(conn, seq - 1, limit=1)
    return found


# --- a column stored in another text of the same value ----------------------------------------


@pytest.mark.parametrize(
    "column, value",
    [
        # Duplicate key: Python reads the last, SQLite's json_extract the first ('SELECT 1').
        ("action", '{"n": 0, "n": 7, "path": "/items/7"}'),
        ("action", '{"path":"/items/7","n":7}'),  # keys out of order
        ("action", '{"n":7,"path":"\\u002fitems\\u002f7"}'),  # escapes: LIKE '%/items/7%' misses
        ("detail", "{ }"),
        ("actor_chain", "[ ]"),
    ],
)
async def test_a_json_column_stored_in_another_text_is_found(
    written: Trail, column: str, value: str
) -> None:
    await written.tamper(
        f'UPDATE audit_events SET "{column}" = :value WHERE seq = 8', params=[{"value": value}]
    )
    assert problems(await written.verify()) == [(8, "hash")]


async def test_a_time_stored_in_another_text_is_found(sqlite_trail: Trail) -> None:
    """On SQLite the time is text, compared as text by ``search --since/--until`` and its
    index: the same instant written ``20261129T100000.500000`` falls out of every window."""
    await sqlite_trail.append(5)
    moment = (await stored(sqlite_trail, 3)).time
    basic = moment.strftime("%Y%m%dT%H%M%S.%f")  # ISO 8601 basic form: the same instant
    await sqlite_trail.tamper(
        "UPDATE audit_events SET time = :t WHERE seq = 3", params=[{"t": basic}]
    )
    window = store.EventFilter(
        since=moment - timedelta(minutes=1), until=moment + timedelta(minutes=1)
    )
    async with sqlite_trail.engine.connect() as conn:
        seen = [e.seq for e in await store.search_events(conn, window)]
    assert 3 not in seen  # hidden from the time window...
    assert problems(await sqlite_trail.verify()) == [(3, "hash")]  # ...so verify must tell


async def test_a_string_column_stored_with_a_raw_nul_is_found(sqlite_trail: Trail) -> None:
    """Events store a NUL as the text ``\\x00``: a raw NUL put in its place read back as the
    same value, so equality search on the column saw another string than the one hashed."""
    await sqlite_trail.log.append(sample(1, target="db\\x00prod"))
    await sqlite_trail.tamper(
        "UPDATE audit_events SET target = :t WHERE seq = 1", params=[{"t": "db\x00prod"}]
    )
    assert problems(await sqlite_trail.verify()) == [(1, "hash")]


# --- the keys checkpoints are checked against ---------------------------------------------------


async def test_a_key_added_to_the_database_does_not_vouch_for_a_rewrite(written: Trail) -> None:
    """Whoever can write the database rewrites event 5, re-chains 5..25 and re-signs the
    checkpoints with a key of their own that they add to ``signing_keys``. Without a head
    file (PostgreSQL's default) nothing tells: the verifier trusts every key in the very
    database it checked. Now a key counts only if its private part is sealed by the node's
    master key (which the database writer does not have), for its kid, and matches it."""
    async with written.engine.connect() as conn:
        events = await store.events_after(conn, 0)
    await written.tamper("DELETE FROM audit_events WHERE seq >= 5", "DELETE FROM audit_checkpoints")
    mallory = SigningKey.generate(time.time())
    await store_signing_key(written.engine, mallory, state="previous")
    prev = events[3].hash or ""
    async with written.engine.begin() as conn:
        for old in events[4:]:
            seq = old.seq or 0
            changed = dataclasses.replace(old, agent="someone-else" if seq == 5 else old.agent)
            digest = event_hash(changed, seq, prev)
            await conn.execute(
                insert(audit_events).values(store.event_row(changed.chained(seq, prev, digest)))
            )
            if seq in (10, 20):
                mark = sign_checkpoint(mallory, seq, digest, old.time)
                await conn.execute(insert(audit_checkpoints).values(dataclasses.asdict(mark)))
            prev = digest
    report = await written.verify()
    assert not report.ok, f"a rewrite re-signed by a key added to the database verified: {report}"


async def test_a_key_sealed_for_another_kid_is_not_trusted(written: Trail) -> None:
    """A row whose private part was copied from the real key's row (so it opens under the
    master key, but for another kid) does not make its own public key trusted."""
    mallory = SigningKey.generate(time.time())
    await store_signing_key(written.engine, mallory, state="previous", cipher=MASTER)
    await written.tamper(
        "UPDATE signing_keys SET private_encrypted = "
        "(SELECT private_encrypted FROM signing_keys WHERE kid = :real) WHERE kid = :mallory",
        params=[{"real": written.key.kid, "mallory": mallory.kid}],
    )
    async with written.engine.connect() as conn:
        keys = await verification_keys(conn, MASTER)
    assert keys[written.key.kid] is not None and not isinstance(keys[written.key.kid], str)
    assert isinstance(keys[mallory.kid], str)


async def test_without_the_master_key_the_report_says_the_keys_were_not_checked(
    written: Trail,
) -> None:
    async with written.engine.connect() as conn:
        report = await verify_trail(conn, head_file=NO_HEAD_FILE)
    assert report.ok and report.to_dict()["keys_authenticated"] is False
    assert (await written.verify()).to_dict()["keys_authenticated"] is True


# --- values an event may hold ---------------------------------------------------------------------


async def test_a_count_too_large_for_the_column_fails_alone(sqlite_trail: Trail) -> None:
    """A row count comes from the target's CommandComplete tag (any run of digits). One
    that does not fit a BIGINT must not take the events batched with it down too."""
    huge = 2**64
    outcomes = await asyncio.gather(
        *(sqlite_trail.log.append(sample(i)) for i in range(20)),
        sqlite_trail.log.append(sample(99, rows=huge)) if _builds(huge) else _refused(),
        return_exceptions=True,
    )
    lost = [o for o in outcomes[:20] if isinstance(o, BaseException)]
    assert not lost, f"{len(lost)} unrelated events lost: {lost[:1]}"
    assert (await sqlite_trail.verify()).ok


def _builds(rows: int) -> bool:
    try:
        sample(99, rows=rows)
    except EventError:
        return False
    return True


async def _refused() -> None:
    raise AuditUnavailable("refused at construction")


async def test_negative_zero_duration_verifies(sqlite_trail: Trail) -> None:
    """SQLite stores -0.0 in a REAL column as 0.0: the hash of ``-0.0`` never verified."""
    await sqlite_trail.log.append(sample(1, duration_ms=-0.0))
    assert (await sqlite_trail.verify()).ok


# --- secrets in command lines and other free text ------------------------------------------------

SECRET = "S3cr3tValue9"


@pytest.mark.parametrize(
    "text",
    [
        # An auth scheme other than Bearer/Basic/DPoP after a sensitive name: the scheme
        # word was redacted and the credential after it kept.
        f'curl -H "Authorization: Token {SECRET}" https://api.example/v1',
        f"curl -H 'Authorization: ApiKey {SECRET}' https://api.example/v1",
        f"Proxy-Authorization: Negotiate {SECRET}",
        # Auth schemes are case-insensitive (RFC 9110 11.1): BEARER was not recognised.
        f"curl -H 'X-Trace: 1' -H 'Authorization: BEARER {SECRET}' https://x",
        f"wget --header='Authorization: BASIC {SECRET}' https://x",
        # PostgreSQL's PASSWORD literal inside a shell command (only sql() knew it).
        f"psql -h db -c \"ALTER ROLE app WITH PASSWORD '{SECRET}'\"",
        f"psql -c \"CREATE USER bob ENCRYPTED PASSWORD '{SECRET}' VALID UNTIL 'infinity'\"",
        # A URL password holding '/' (base64 passwords do).
        f"psql postgres://app:ab/{SECRET}@db.internal:5432/x",
    ],
)
def test_secrets_in_command_lines_are_redacted(text: str) -> None:
    from tether.audit.redact import Redactor

    assert SECRET not in Redactor().text(text)


async def test_a_command_with_an_authorization_token_is_stored_redacted(
    sqlite_trail: Trail,
) -> None:
    """The same, end to end: the command as the trail stores it."""
    from tests.audit.conftest import AGENT

    await sqlite_trail.auditor.command(
        AGENT, target="web-1", command=f'curl -H "Authorization: Token {SECRET}" http://x'
    )
    async with sqlite_trail.engine.connect() as conn:
        (event,) = await store.events_after(conn, 0)
    assert SECRET not in event.action["command"]


@pytest.mark.parametrize(
    "text",
    [
        "/v1/" + "a" * 20_000 + "?page=1",  # a long path with a query: 30 s before
        "GET /" + "eyJ" * 7_000 + "=",  # 'eyJ' over and over: 40 s before
        "a." * 10_000 + "=",
        "x" + " -a" * 7_000 + "=1",
    ],
    ids=["path", "eyJ", "dotted", "flags"],
)
def test_redacting_long_agent_text_takes_linear_time(text: str) -> None:
    """Every path, command and argument an agent sends is redacted on the event loop
    before its event exists: a backtracking pattern let one request stall the node."""
    from tether.audit.redact import Redactor

    started = time.perf_counter()
    Redactor().text(text)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("text", ["/x?" + "a:" * 3_000, "a=" * 3_000 + "1", "x://" * 3_000])
async def test_a_value_of_nested_pairs_is_audited(sqlite_trail: Trail, text: str) -> None:
    """``a:a:a:...`` made the redactor recurse once per pair: a RecursionError, so the
    action could not be audited at all (and was refused, unrecorded)."""
    from tests.audit.conftest import AGENT

    seq = await sqlite_trail.auditor.command(AGENT, target="web-1", command=text)
    assert seq == 1
