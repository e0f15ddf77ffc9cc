"""Adversarial review of MCP resource URIs (spec 5.4) and SSH forward patterns (5.2).

Each test here failed before its fix:

* an MCP resource URI with an escaped unreserved character (``file:///srv/%70rivate/x``), an
  empty segment (``file:///srv//private/x``) or a query or fragment (``file:///srv/private?x``)
  stepped around a deny rule on ``file:///srv/private/**`` while a broad allow rule let it
  through; the MCP server reads all of them as ``/srv/private/...``;
* an allow rule's forward pattern ``10.0.0.*:22`` allowed ``10.0.0.1.evil.example:22`` (and
  ``db-*:22`` allowed ``db-1.evil.example:22``): names anyone can make resolve anywhere.
"""

from __future__ import annotations

import string
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy.errors import AmbiguousPath, PolicyLoadError
from tether.policy.request_action import check_resource_uri

from .conftest import policies, request

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MCP = policies(
    """
    rules:
      - id: docs
        effect: allow
        mcp: {resources: ["file:///srv/**", "db://main/**"]}
      - id: no-private
        effect: deny
        mcp: {resources: ["file:///srv/private/**"]}
    """
)


def resource(uri: str) -> tuple[str, str]:
    d = MCP.decide(request("mcp", {"resource": uri}))
    return d.decision, d.reason


@pytest.mark.parametrize(
    "uri",
    [
        "file:///srv/%70rivate/key",
        "file:///srv/priv%61te/key",
        "file:///srv/private%2Fkey",
        "file:///srv//private/key",
        "file:////srv/private/key",
        "file:///srv/private%2e/key",
        "file:///srv/%zz",
        "file:///srv/private\\key",
        "file:///srv/\uff50rivate/key",
    ],
)
def test_non_canonical_resource_uris_are_ambiguous(uri: str) -> None:
    assert resource(uri) == ("deny", "ambiguous-path")


@pytest.mark.parametrize(
    "uri", ["file:///srv/private?x=1", "file:///srv/private#top", "file:///srv/private/k?v=2"]
)
def test_deny_rule_sees_the_uri_without_query_and_fragment(uri: str) -> None:
    assert resource(uri) == ("deny", "denied-by-rule")


@pytest.mark.parametrize(
    "uri",
    [
        "file:///srv/docs/a.txt",
        "file:///srv/docs/my%20file.txt",
        "file:///srv/docs/caf%C3%A9",
        "file:///srv/docs/",
        "file:///srv/docs?v=2",
        "db://main/t?q=a//b",
    ],
)
def test_canonical_resource_uris_still_match(uri: str) -> None:
    assert resource(uri) == ("allow", "allowed")


@pytest.mark.parametrize("uri", ["file:///srv/./private/key", "file:///srv/x/../private/key"])
def test_dot_segments_meet_no_wildcard(uri: str) -> None:
    assert resource(uri) == ("deny", "default-deny")


_UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


@SETTINGS
@given(st.text(max_size=40))
def test_check_resource_uri_never_crashes(uri: str) -> None:
    try:
        check_resource_uri(uri)
    except AmbiguousPath:
        return
    # accepted: every escape is valid and stands for a character that needs it
    for index, char in enumerate(uri):
        if char == "%":
            escape = uri[index + 1 : index + 3]
            assert len(escape) == 2 and all(c in string.hexdigits for c in escape)
            decoded = chr(int(escape, 16))
            assert decoded not in _UNRESERVED and decoded not in "/\\%?#"
            assert 0x20 <= ord(decoded) < 0x7F or ord(decoded) >= 0x80


@st.composite
def private_spellings(draw: st.DrawFn) -> str:
    """``file:///srv/private/<name>`` spelled with random escapes, slashes, dots and tails."""
    name = draw(st.text(alphabet="abk.", min_size=1, max_size=6))
    text = "srv/private/" + name
    out = []
    for char in text:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            out.append(f"%{ord(char):02X}")
        elif roll == 1 and char == "/":
            out.append(draw(st.sampled_from(["//", "/./", "/x/../", "%2F", "\\"])))
        else:
            out.append(char)
    tail = draw(st.sampled_from(["", "?a", "#b", "/", "?x#y"]))
    return "file:///" + "".join(out) + tail


@SETTINGS
@given(private_spellings())
def test_no_spelling_of_a_private_resource_is_allowed(uri: str) -> None:
    """Whatever reads as ``/srv/private/...`` once decoded and folded is never allowed."""
    decision, _ = resource(uri)
    path = unquote(uri.removeprefix("file://").split("?")[0].split("#")[0]).replace("\\", "/")
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            segments = segments[:-1]
        elif segment not in ("", "."):
            segments.append(segment)
    if segments[:2] == ["srv", "private"]:
        assert decision == "deny", uri


# --- SSH forwards ----------------------------------------------------------------------------

FORWARDS = policies(
    """
    rules:
      - id: lan
        effect: allow
        ssh: {forwards: ["10.0.0.*:22", "db-*:5432", "*.corp:443", "*:80"]}
      - id: no-gateway
        effect: deny
        ssh: {forwards: ["10.0.0.1*:*"]}
    """
)


def forward(destination: str) -> tuple[str, str | None]:
    d = FORWARDS.decide(request("ssh", {"forward": destination}))
    return d.decision, d.rule


@pytest.mark.parametrize(
    "destination",
    [
        "10.0.0.5.evil.example:22",
        "db-1.evil.example:5432",
        "a.b.corp:443",
        "10.0.0.5:2222",
    ],
)
def test_allow_forward_wildcards_stay_within_a_label(destination: str) -> None:
    assert forward(destination) == ("deny", None)


def test_allow_forward_wildcards_still_match_in_their_label() -> None:
    assert forward("10.0.0.5:22") == ("allow", "lan")
    assert forward("db-primary:5432") == ("allow", "lan")
    assert forward("git.corp:443") == ("allow", "lan")
    assert forward("anything.example.org:80") == ("allow", "lan")  # a host of exactly *


def test_deny_forward_wildcards_match_any_run() -> None:
    assert forward("10.0.0.12:22") == ("deny", "no-gateway")
    assert forward("10.0.0.1.evil.example:80") == ("deny", "no-gateway")


def test_a_forward_pattern_needs_host_and_port() -> None:
    with pytest.raises(PolicyLoadError, match="host:port"):
        policies("rules:\n  - id: f\n    effect: allow\n    ssh: {forwards: ['db']}\n")


LABELS = st.text(alphabet="ab1-", min_size=1, max_size=4).filter(
    lambda label: label[0] != "-" and label[-1] != "-"
)


IP_ONLY = policies("rules:\n  - id: lan\n    effect: allow\n    ssh: {forwards: ['10.0.0.*:2*']}\n")


@SETTINGS
@given(st.integers(0, 255), st.lists(LABELS, max_size=3), st.sampled_from(["22", "80", "2", "23"]))
def test_an_ip_pattern_never_allows_a_name_below_the_address(
    last: int, labels: list[str], port: str
) -> None:
    host = ".".join([f"10.0.0.{last}", *labels, "example"]) if labels else f"10.0.0.{last}"
    decision = IP_ONLY.decide(request("ssh", {"forward": f"{host}:{port}"}))
    assert (decision.decision == "allow") == (not labels and port.startswith("2"))
