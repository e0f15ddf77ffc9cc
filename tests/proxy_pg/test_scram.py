"""SCRAM-SHA-256 client: the RFC 7677 example, and servers that must not be believed."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.proxy.pg.scram import ScramClient, ScramError, md5_password
from tether.vault.pg_roles import scram_verifier

SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)


def _client() -> ScramClient:
    return ScramClient("pencil", nonce="rOprNGfwEbeRWgbNEkqO", username="user")


def test_rfc7677_example() -> None:
    client = _client()
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.final(SERVER_FIRST)
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=otherNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # does not extend ours
        b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # adds nothing
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10",  # too few iterations
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999",  # too many
        b"r=rOprNGfwEbeRWgbNEkqOx,s=!!!,i=4096",
        b"garbage",
        b"\xff",
    ],
)
def test_bad_server_first(server_first: bytes) -> None:
    with pytest.raises(ScramError):
        _client().final(server_first)


def test_wrong_server_signature_is_refused() -> None:
    client = _client()
    client.final(SERVER_FIRST)
    with pytest.raises(ScramError):
        client.verify(b"v=" + base64.b64encode(b"x" * 32))
    with pytest.raises(ScramError):
        client.verify(b"e=invalid-proof")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_server_messages_only_scram_error(data: bytes) -> None:
    client = _client()
    for step in (client.final, client.verify):
        with contextlib.suppress(ScramError):
            step(data)


def test_verifier_matches_the_exchange() -> None:
    """The verifier pg_roles stores lets the client's proof through (what a server checks)."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_verifier("pencil", salt=salt)
    assert verifier.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")


def test_md5() -> None:
    assert md5_password("u", "p", b"salt").startswith(b"md5")
    assert len(md5_password("u", "p", b"salt")) == 3 + 32 + 1
    assert md5_password("u", "p", b"salt") != md5_password("u", "p", b"tlas")
