"""Property tests of the broker's parsers: header filtering, cookie scoping, routing and the
query credential never crash, never let through what they must drop, and the target a
request is forwarded with is always the one the engine decided on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy.errors import AmbiguousPath
from tether.policy.httpmatch import canonicalize_path
from tether.proxy.http.headers import HOP_BY_HOP, request_headers, response_headers
from tether.proxy.http.routing import Router
from tether.vault.http_inject import Injection

from .conftest import Agent, Harness, raw_request
from .upstream import Upstream

NAMES = st.sampled_from(
    [b"authorization", b"dpop", b"cookie", b"connection", b"x-forwarded-for", b"forwarded",
     b"keep-alive", b"te", b"upgrade", b"x-api-key", b"accept", b"host", b"x-real-ip",
     b"transfer-encoding", b"proxy-authorization", b"expect", b"x-custom", b"X-Forwarded-Host"]
) | st.binary(min_size=1, max_size=12)  # fmt: skip
VALUES = st.binary(max_size=40) | st.sampled_from(
    [b"x-custom, accept", b"api.a=1; b.c=2; api.=3; api.x", b"keep-alive", b"close, x-api-key"]
)
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=12)
FAST = settings(max_examples=300, deadline=None)


@FAST
@given(HEADERS, st.sampled_from(["api", "a-b", "x"]))
def test_request_headers_drop_what_they_must(
    headers: list[tuple[bytes, bytes]], target: str
) -> None:
    kept = request_headers(headers, target, injected=[b"x-api-key"])
    listed = {
        part.strip().lower()
        for name, value in headers if name.lower() == b"connection"
        for part in value.split(b",")
    }  # fmt: skip
    for name, value in kept:
        assert name == name.lower()
        assert name not in HOP_BY_HOP | {b"authorization", b"dpop", b"host", b"x-api-key"}
        assert not name.startswith(b"x-forwarded-") and name != b"forwarded"
        assert name not in listed or name == b"cookie"
        if name == b"cookie":
            for pair in value.split(b"; "):
                original = target.encode() + b"." + pair
                assert any(original in v for n, v in headers if n.lower() == b"cookie")
    assert sum(1 for name, _ in kept if name == b"cookie") <= 1


@FAST
@given(HEADERS, st.binary(max_size=8), st.sampled_from([None, "/t/api"]), st.booleans())
def test_response_headers(
    headers: list[tuple[bytes, bytes]], suffix: bytes, prefix: str | None, echo: bool
) -> None:
    secret = b"\x00SECRET" + suffix
    if echo:
        headers = [*headers, (b"x-echo", b"Bearer " + secret), (b"set-cookie", secret + b"=1")]
    kept = response_headers(headers, "api", path_prefix=prefix, secrets=[secret])
    for name, value in kept:
        assert name not in HOP_BY_HOP
        assert secret not in value
        if name == b"set-cookie":
            assert value.startswith(b"api.")
            assert b"domain=" not in value.lower()


@FAST
@given(st.binary(max_size=60), st.binary(max_size=30), st.sampled_from(["", "tether.test"]))
def test_routing_never_crashes_and_keeps_the_raw_path(
    raw: bytes, query: bytes, domain: str
) -> None:
    router = Router(issuer="http://127.0.0.1:1", domain=domain)
    path = b"/t/" + raw
    scope = {"raw_path": path, "path": "", "query_string": query, "headers": [(b"host", raw)]}
    route = router.route(scope)
    if route is None:
        return
    if route.path_prefix is not None:
        assert (route.path_prefix + route.path).encode("latin-1") == path
        assert route.url == "http://127.0.0.1:1" + path.decode("latin-1")
    else:
        assert route.path.encode("latin-1") == path
    try:
        decided = canonicalize_path(route.request_target)
    except AmbiguousPath:
        return
    assert decided.path == route.path  # what is forwarded is what the engine matched
    assert decided.query == query.decode("latin-1")


@FAST
@given(st.text(alphabet="ab=&%2k_", max_size=30), st.text(min_size=1, max_size=10))
def test_query_credential_replaces_only_its_parameter(query: str, value: str) -> None:
    injection = Injection(query_param=("k", value))
    result = injection.query(query)
    parts = result.split("&")
    assert parts[-1].startswith("k=") and all(not p.startswith("k=") for p in parts[:-1])
    kept = [p for p in query.split("&") if p and p.partition("=")[0] != "k"]
    assert parts[:-1] == kept


SEGMENTS = st.sampled_from(
    ["v1", "admin", "users", "..", ".", "%2e%2e", "%2E", "%2f", "%2F", "", ";x=1", "a;b",
     "\\", "%5c", "%00", "%c0%ae", "%25", "%", "a%20b", "~", "items", "7", "%ef%bc%8f", "'"]
)  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, Upstream, Agent]]:
    server = Upstream().start()
    node = Harness(tmp_path_factory.mktemp("props"))
    node.add_target("api", base_url=server.url)
    yield node, server, node.agent()
    node.stop()
    server.stop()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(SEGMENTS, min_size=1, max_size=6))
def test_on_the_wire_only_decided_paths_are_forwarded(
    shared: tuple[Harness, Upstream, Agent], segments: list[str]
) -> None:
    harness, upstream, agent = shared
    path = "/" + "/".join(segments)
    raw = "/t/api" + path
    headers = agent.headers("GET", harness.url + raw)
    before = len(upstream.seen)
    head = (f"GET {raw} HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n"
            f"DPoP: {headers['DPoP']}").encode("latin-1")  # fmt: skip
    status, _ = raw_request(harness.port, head)
    if len(upstream.seen) == before:
        assert status != 200
        return
    assert status == 200
    forwarded = upstream.seen[-1].target
    assert forwarded == path
    assert canonicalize_path(forwarded).path == forwarded
    assert not forwarded.startswith("/v1/admin")
    decision = harness.events("decision", target="api")[-1]
    assert decision.decision == "allow" and decision.action["http"]["path"] == forwarded
