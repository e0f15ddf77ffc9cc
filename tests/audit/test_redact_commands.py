"""Passwords command-line tools take where no flag name says so, and URL passwords holding
an ``@``, never reach the trail (``tether.audit.redact_commands`` and the shape rules).

Before the fix ``mysql -pSECRET``, ``sshpass -p SECRET``, ``curl -u user:SECRET``,
``curl --user user:SECRET``, a ``PGPASSWORD=`` value holding a ``,`` ``}`` or ``]``, and
the part after an ``@`` inside a URL password all stayed in audit events. Properties:
whatever the secret, it is gone from every such form; random text never crashes the
redactor; long adversarial text takes linear time.
"""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.audit.conftest import AGENT, Trail
from tether.audit import store
from tether.audit.redact import REDACTED, Redactor
from tether.audit.redact_commands import redact_commands

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters a password may hold inside one shell word (no blank, quote, backslash or shell
# operator: those end the word or are the shell's, not the password's).
_WORD = string.ascii_letters + string.digits + "!#%+,-./:=?@[]^_{}~"
# A URL password: its '/', '?' and '#' would begin the path, query or fragment.
_URL_WORD = _WORD.replace("/", "").replace("?", "").replace("#", "")
# A quoted password may hold blanks and shell operators too.
_QUOTED = _WORD + " ;&|<>()$\\"


def _secret(alphabet: str) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=1, max_size=40).map(lambda tail: "Zq" + tail)


FORMS = [
    ("mysql -p{s} billing", _WORD),
    ("mysql -u root -h db -p{s}", _WORD),
    ("mysqldump --single-transaction -uapp -p{s} app > /tmp/app.sql", _WORD),
    ("/usr/bin/mariadb-dump -p'{s}' app", _QUOTED),
    ('mysql -p"{s}" -e "select 1"', _QUOTED),
    ("mysql --password={s} app", _WORD),
    ("mysql --password '{s}' app", _QUOTED),
    ("sshpass -p {s} ssh -p 2222 deploy@web-1", _WORD),
    ("sshpass -p{s} scp a deploy@web-1:", _WORD),
    ("sshpass -p '{s}' ssh web-1", _QUOTED),
    ("curl -u deploy:{s} https://api.example/v1", _WORD),
    ("curl -sSfu deploy:{s} https://api.example/v1", _WORD),
    ("curl -udeploy:{s} https://api.example/v1", _WORD),
    ('curl -u "deploy:{s}" https://api.example/v1', _QUOTED),
    ("curl --user deploy:{s} https://api.example/v1", _WORD),
    ("curl --user=deploy:{s} https://api.example/v1", _WORD),
    ("curl -x proxy:3128 -U me:{s} https://api.example/v1", _WORD),
    ('curl -H "X-A: b;c" -u deploy:{s} https://x', _WORD),
    ("bash -c 'curl -u deploy:{s} https://x'", _WORD.replace("'", "")),
    ("PGPASSWORD={s} psql -h db app", _WORD),
    ("env PGPASSWORD='{s}' psql", _QUOTED),
    ("wget --password={s} https://x", _WORD),
    ("wget --http-password {s} https://x", _WORD),
    ("vault login --token {s}", _WORD),
    ("tool --api-key={s} list", _WORD),
    ("tool --api-key {s} list", _WORD),
    ("redis-cli -h cache -a {s} ping", _WORD),
    ("ldapsearch -x -H ldap://dir -D cn=admin,dc=x -w {s} -b dc=x", _WORD),
    ("ldapmodify -xw{s} -f change.ldif", _WORD),
    ("mongosh -u app -p {s} mongodb://db/app", _WORD),
    ("sqlcmd -S db -U sa -P {s} -Q 'select 1'", _WORD),
    ("openssl pkcs12 -in a.p12 -passin pass:{s} -nokeys", _WORD),
    ('openssl rsa -in k.pem -passout "pass:{s}"', _QUOTED),
    ("git clone https://deploy:{s}@git.example/app.git", _URL_WORD),
    ("curl https://me@corp.example:{s}@api.example/x", _URL_WORD),
    ("psql postgres://app:{s}@db:5432/app", _URL_WORD),
]


@SETTINGS
@given(data=st.data(), form=st.sampled_from(FORMS))
def test_a_command_line_secret_never_stays(data: st.DataObject, form: tuple[str, str]) -> None:
    template, alphabet = form
    secret = data.draw(_secret(alphabet))
    redacted = Redactor().text(template.format(s=secret))
    assert secret not in redacted
    assert REDACTED in redacted


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("mysql -u root -p billing", "mysql -u root -p billing"),  # -p then a blank: prompts
        ("curl -u deploy https://x", "curl -u deploy https://x"),  # no password given
        ("sshpass -p pw ssh -p 2222 web-1", "sshpass -p [REDACTED] ssh -p 2222 web-1"),
        ("mysql -uphil -ppw", "mysql -uphil -p[REDACTED]"),  # -u takes 'phil': not -p
        ("cp -pr a b && ls -la", "cp -pr a b && ls -la"),
        ("curl -u 'me:pw' x", "curl -u 'me:[REDACTED]' x"),
        ("ssh://deploy@host:22", "ssh://deploy@host:22"),
        ("https://u:pw@host/a@b", "https://u:[REDACTED]@host/a@b"),
        ("token=abc&page=2", "token=[REDACTED]&page=2"),  # a query string alone
        ("PGPASSWORD=a,b}c psql", "PGPASSWORD=[REDACTED] psql"),
        ("openssl rsa -passin env:KEY_PASS -in k", "openssl rsa -passin env:KEY_PASS -in k"),
        ("ldapsearch -x -D cn=admin -W -b dc=x", "ldapsearch -x -D cn=admin -W -b dc=x"),
    ],
)
def test_what_is_not_secret_stays(text: str, kept: str) -> None:
    assert Redactor().text(text) == kept


_FRAGMENTS = st.sampled_from(
    ["mysql", "sshpass", "curl", "redis-cli", "mariadb-x", "--user", "--proxy-user", "-p",
     "-u", "-a", "-su", " ", "\t", "\n", ":", "@", "=", "'", '"', ";", "/", "x", "://",
     "https", "PGPASSWORD", ",", "é", "\x00", "-", "pw", "ldapadd", "-w", "pass:", "mongo",
     "sqlcmd", "-P"]
)  # fmt: skip
_TEXT = st.one_of(st.text(max_size=80), st.lists(_FRAGMENTS, max_size=30).map("".join))


@settings(max_examples=400, deadline=None)
@given(value=_TEXT)
def test_random_text_never_crashes(value: str) -> None:
    assert isinstance(Redactor().text(value), str)
    assert isinstance(redact_commands(value, REDACTED), str)


@settings(max_examples=40, deadline=None)
@given(pieces=st.lists(_FRAGMENTS, min_size=1, max_size=8))
def test_long_adversarial_text_takes_linear_time(pieces: list[str]) -> None:
    """Every command an agent sends is redacted on the event loop before its event exists."""
    unit = "".join(pieces)
    text = unit * (60_000 // len(unit) + 1)
    started = time.perf_counter()
    Redactor().text(text)
    assert time.perf_counter() - started < 1.5


@pytest.mark.parametrize(
    "text",
    [
        "curl " * 12_000 + "-u",
        "mysql -p" * 8_000,
        "sshpass -p " * 6_000,
        "-sSfsSfsSfsSfsSfsSfsSfsSfsSfsSfsSfu" * 2_000,
        "https://a:" + "@b" * 30_000,
        "https://a:b" * 6_000,
        "--user " * 10_000 + "a",
        "A=" * 30_000,
    ],
)
def test_known_worst_cases_take_linear_time(text: str) -> None:
    started = time.perf_counter()
    Redactor().text(text)
    assert time.perf_counter() - started < 1.0


async def test_a_command_with_a_flag_password_is_stored_redacted(sqlite_trail: Trail) -> None:
    """End to end: the commands as the trail stores them."""
    commands = [
        "sshpass -p Zq-s3cret ssh web-1 uptime",
        "mysql -u app -pZq-s3cret -e 'select 1'",
        "curl -sSu deploy:Zq-s3cret https://api.example",
    ]
    for command in commands:
        await sqlite_trail.auditor.command(AGENT, target="web-1", command=command)
    async with sqlite_trail.engine.connect() as conn:
        events = await store.events_after(conn, 0)
    assert [e.action["command"] for e in events] == [
        "sshpass -p [REDACTED] ssh web-1 uptime",
        "mysql -u app -p[REDACTED] -e 'select 1'",
        "curl -sSu deploy:[REDACTED] https://api.example",
    ]


@settings(max_examples=300, deadline=None)
@given(value=_TEXT)
def test_the_written_out_marks_are_the_listed_marks(value: str) -> None:
    from tether.audit.redact_commands import MARKS, has_mark

    assert has_mark(value) == any(mark in value for mark in MARKS)
