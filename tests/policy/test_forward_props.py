"""SSH forward destinations: only the canonical spelling of a host is accepted, so a deny
rule written for an address also meets every other spelling a resolver reads as it."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.policy.request_action import canonical_host

from .conftest import policies, request

DENY_LOOPBACK = """
rules:
  - id: anywhere
    effect: allow
    ssh: {forwards: ["*:*"]}
  - id: never-the-loopback
    effect: deny
    ssh: {forwards: ["127.0.0.1:*", "localhost:*", "::1:*"]}
"""
LOOPBACK = 0x7F000001


def _number(value: int, style: str) -> str:
    return {"dec": str(value), "hex": f"0x{value:x}", "HEX": f"0X{value:X}", "oct": f"0{value:o}"}[
        style
    ]


@st.composite
def loopback_spellings(draw: st.DrawFn) -> str:
    """``127.0.0.1`` as inet_aton reads it: 1 to 4 parts, each decimal, hex or octal."""
    parts = draw(st.integers(1, 4))
    styles = st.sampled_from(["dec", "hex", "HEX", "oct"])
    octets = [(LOOPBACK >> shift) & 0xFF for shift in (24, 16, 8, 0)]
    values = [*octets[: parts - 1], LOOPBACK & ((1 << (8 * (5 - parts))) - 1)]
    return ".".join(_number(v, draw(styles)) for v in values)


@given(loopback_spellings(), st.integers(1, 65535))
def test_every_spelling_of_the_loopback_is_denied(host: str, port: int) -> None:
    assert socket.inet_aton(host) == socket.inet_aton("127.0.0.1")  # the resolver's reading
    decision = policies(DENY_LOOPBACK).decide(request("ssh", {"forward": f"{host}:{port}"}))
    assert decision.decision == "deny", (host, decision)


@given(st.sampled_from(["localhost", "127.0.0.1", "::1", "::ffff:127.0.0.1", "0:0::1"]),
       st.booleans(), st.integers(1, 65535))  # fmt: skip
def test_the_loopback_by_name_in_any_case_is_denied(host: str, upper: bool, port: int) -> None:
    spelled = host.upper() if upper else host
    decision = policies(DENY_LOOPBACK).decide(request("ssh", {"forward": f"{spelled}:{port}"}))
    assert decision.decision == "deny", (spelled, decision)


@given(st.text(max_size=40))
def test_canonical_host_never_crashes_and_accepts_only_one_spelling(host: str) -> None:
    if not canonical_host(host):
        return
    assert host == host.lower() and not host.endswith(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: lower case, no trailing dot, last label not a number
    assert str(address) == host
    assert not address.is_unspecified and not (address.version == 4 and host.startswith("0."))


@pytest.mark.parametrize("host", ["0.0.0.0", "0.1.2.3", "::", "0:0::0"])
def test_this_host_is_never_a_destination(host: str) -> None:
    """connect() to 0.0.0.0 or :: reaches the local host (Linux): past a loopback deny."""
    anywhere = "rules:\n  - id: any\n    effect: allow\n    ssh: {forwards: ['*:*']}\n"
    for rules in (DENY_LOOPBACK, anywhere):
        decision = policies(rules).decide(request("ssh", {"forward": f"{host}:22"}))
        assert decision.decision == "deny" and decision.reason == "invalid-request", (
            host,
            decision,
        )


def test_canonical_destinations_still_match_their_rules() -> None:
    allowed = policies(
        "rules:\n  - id: db\n    effect: allow\n    ssh: {forwards: ['db.internal:5432', "
        "'10.0.0.5:22', '2001:db8::1:443']}\n"
    )
    for destination in ("db.internal:5432", "10.0.0.5:22", "2001:db8::1:443"):
        assert allowed.decide(request("ssh", {"forward": destination})).decision == "allow"
    for destination in ("DB.internal:5432", "10.0.0.05:22", "2001:DB8::1:443", "db.internal:05432"):
        decision = allowed.decide(request("ssh", {"forward": destination}))
        assert decision.reason == "invalid-request", destination
