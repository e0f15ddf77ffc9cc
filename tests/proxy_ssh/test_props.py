"""Property tests of the pure parts: the login parser, SFTP paths, the transfer digest."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy.errors import AmbiguousPath
from tether.policy.filepath import canonical_file_path
from tether.proxy.ssh.login import Login, LoginError, parse_login
from tether.proxy.ssh.sftp_io import StreamDigest
from tether.proxy.ssh.sftp_paths import PathRefused, absolute_path, resolve_realpath

LOGIN_CHARS = st.sampled_from("abcz09_.@+-Z/: \x00\n\té")
TARGET = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
REMOTE = st.from_regex(r"[A-Za-z0-9_.+][A-Za-z0-9_.@+-]{0,20}", fullmatch=True)


@settings(max_examples=300)
@given(st.text(LOGIN_CHARS, max_size=140))
def test_login_parser_never_crashes_and_round_trips(text: str) -> None:
    try:
        login = parse_login(text)
    except LoginError:
        return
    assert str(login) == text
    assert "@" not in login.target and login.target
    assert parse_login(str(login)) == login


@settings(max_examples=200)
@given(REMOTE, TARGET)
def test_login_splits_at_the_last_at_sign(remote: str, target: str) -> None:
    assert parse_login(f"{remote}@{target}") == Login(remote, target)


@pytest.mark.parametrize(
    "text", ["root", "@web-1", "root@", "root@Web-1", "root@web_1", "ro ot@web-1", "-x@web-1",
             "root@web-1.example", "a" * 120 + "@web-1"],
)  # fmt: skip
def test_malformed_logins(text: str) -> None:
    with pytest.raises(LoginError):
        parse_login(text)


PATH_CHARS = st.sampled_from(["a", "b", ".", "..", "/", "//", "\\", "\x00", "\n", "é", "~", " "])


@settings(max_examples=300)
@given(st.lists(PATH_CHARS, max_size=12).map("".join))
def test_sftp_paths_are_absolute_and_never_repaired(text: str) -> None:
    raw = text.encode()
    path = absolute_path(raw, "/home/agent")
    assert path.startswith("/")
    if text.startswith("/"):
        assert path == text  # absolute paths go to the policy exactly as sent
    else:
        assert path == "/home/agent/" + text if text else path == "/home/agent"
    try:
        canonical_file_path(path)
    except AmbiguousPath:
        return
    assert ".." not in path.split("/") and "//" not in path


@settings(max_examples=300)
@given(st.lists(PATH_CHARS, max_size=12).map("".join))
def test_realpath_is_canonical_or_refused(text: str) -> None:
    try:
        folded = resolve_realpath(text.encode(), "/home/agent")
    except PathRefused:
        return
    assert canonical_file_path(folded) == folded


def test_non_utf8_paths_are_refused() -> None:
    with pytest.raises(PathRefused):
        absolute_path(b"/tmp/\xff", "/")


@settings(max_examples=150)
@given(st.binary(min_size=0, max_size=4000), st.integers(1, 700), st.randoms())
def test_digest_in_any_arrival_order_is_the_file_digest(
    data: bytes, block: int, rnd: random.Random
) -> None:
    chunks = [(i, data[i : i + block]) for i in range(0, len(data), block)]
    rnd.shuffle(chunks)
    digest = StreamDigest()
    for offset, chunk in chunks:
        digest.feed(offset, chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert digest.size == len(data)


@settings(max_examples=150)
@given(st.binary(min_size=2, max_size=2000), st.integers(1, 300), st.data())
def test_digest_of_a_non_sequential_pass_is_never_wrong(
    data: bytes, block: int, draw: st.DataObject
) -> None:
    chunks = [(i, data[i : i + block]) for i in range(0, len(data), block)]
    extra = draw.draw(st.lists(st.sampled_from(chunks), max_size=3))
    digest = StreamDigest()
    for offset, chunk in chunks + extra:
        digest.feed(offset, chunk)
    result = digest.hexdigest()
    assert result is None if extra else result == hashlib.sha256(data).hexdigest()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 3 * 1024 * 1024), st.integers(1, 300 * 1024), st.randoms())
def test_digest_of_large_transfers_in_batches_is_the_file_digest(
    size: int, block: int, rnd: random.Random
) -> None:
    """Large blocks, a few of them out of order: still the digest of the file."""
    data = rnd.randbytes(size)
    chunks = [(i, data[i : i + block]) for i in range(0, len(data), block)]
    early = rnd.randint(0, 4)
    chunks[:early] = rnd.sample(chunks[:early], len(chunks[:early]))  # a few out of order
    digest = StreamDigest()
    for offset, chunk in chunks:
        digest.feed(offset, chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert digest.size == len(data)
