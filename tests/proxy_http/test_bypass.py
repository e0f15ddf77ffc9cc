"""Every bypass class of spec 5.1, sent on the wire exactly as written (raw sockets and
``curl --path-as-is``): none reaches the target, each is refused and audited."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .conftest import Agent, Harness, agent_head, curl, curl_status, raw_request
from .upstream import Upstream

# (raw path inside /t/api, what it tries): the allow rule covers /v1/**, a deny rule
# /v1/admin/**; each path below would reach /v1/admin/... on a server that normalises it.
AMBIGUOUS = [
    ("/v1/../v1/admin/users", "dot-dot"),
    ("/v1/%2e%2e/v1/admin/users", "encoded dot-dot"),
    ("/v1/%2E%2e/v1/admin/users", "mixed-case encoded dot-dot"),
    ("/v1/.%2e/v1/admin/users", "half-encoded dot-dot"),
    ("/v1/./admin/users", "dot segment"),
    ("/v1%2fadmin/users", "encoded slash"),
    ("/v1/x%2F..%2Fadmin/users", "encoded slash traversal"),
    ("/v1//admin/users", "empty segment"),
    ("/v1/admin;x=1/users", "matrix parameter"),
    ("/v1/..;/v1/admin/users", "tomcat dot-dot-semicolon"),
    ("/v1/x%3b/../admin", "encoded semicolon"),
    ("/v1/x%5c..%5cadmin/users", "encoded backslash"),
    ("/v1/x\\..\\admin/users", "raw backslash"),
    ("/v1/%c0%ae%c0%ae/v1/admin/users", "overlong UTF-8 dot"),
    ("/v1/%e0%80%ae%e0%80%ae/admin", "3-byte overlong dot"),
    ("/v1/%252e%252e/v1/admin/users", "double encoding"),
    ("/v1/admin%00/users", "encoded NUL"),
    ("/v1/a%0d%0aX-Injected:%20yes", "encoded CRLF"),
    ("/v1/%zz/admin", "invalid percent-encoding"),
    ("/v1/items%", "truncated percent-encoding"),
    ("/v1/%ef%bc%8fadmin", "fullwidth slash look-alike"),
    ("/v1/items#frag", "fragment"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, Upstream, Agent]]:
    """One node and upstream for the module (each test starts with a clean record)."""
    server = Upstream().start()
    node = Harness(tmp_path_factory.mktemp("bypass"))
    node.add_target("api", base_url=server.url)
    yield node, server, node.agent()
    node.stop()
    server.stop()


@pytest.fixture
def harness(shared: tuple[Harness, Upstream, Agent]) -> Harness:
    return shared[0]


@pytest.fixture
def upstream(shared: tuple[Harness, Upstream, Agent]) -> Upstream:
    shared[1].seen.clear()
    return shared[1]


@pytest.fixture
def agent(shared: tuple[Harness, Upstream, Agent]) -> Agent:
    return shared[2]


def _send(harness: Harness, agent: Agent, method: str, path: str, *extra: str) -> int:
    status, _ = raw_request(harness.port, agent_head(harness, agent, method, path, *extra))
    return status


@pytest.mark.parametrize(("path", "what"), AMBIGUOUS, ids=[w for _, w in AMBIGUOUS])
def test_ambiguous_paths_never_reach_the_target(
    harness: Harness, upstream: Upstream, agent: Agent, path: str, what: str
) -> None:
    status = _send(harness, agent, "GET", path)
    assert status in (400, 403), what
    assert upstream.seen == [], what
    if status == 403:
        decision = harness.events("decision", target="api")[-1]
        assert (decision.decision, decision.reason) == ("deny", "ambiguous-path")


def test_curl_path_as_is(harness: Harness, upstream: Upstream, agent: Agent) -> None:
    for path in ("/v1/../v1/admin/users", "/v1/%2e%2e/v1/admin/users", "/v1//admin/users"):
        url = harness.url + "/t/api" + path
        headers = agent.headers("GET", url)
        done = curl(url, "-H", f"Authorization: {headers['Authorization']}",
                    "-H", f"DPoP: {headers['DPoP']}")  # fmt: skip
        status, body = curl_status(done)
        assert status == 403, (path, done)
        assert json.loads(body)["reason"] == "ambiguous-path"
    assert upstream.seen == []


def test_raw_non_ascii_and_controls(harness: Harness, upstream: Upstream, agent: Agent) -> None:
    for raw in (b"/v1/\xc0\xae\xc0\xae/admin", b"/v1/caf\xc3\xa9", b"/v1/a\x01b", b"/v1/a\x7fb"):
        head = (
            b"GET /t/api"
            + raw
            + b" HTTP/1.1\r\nHost: x\r\nAuthorization: DPoP "
            + (agent.token.encode())
        )
        status, _ = raw_request(harness.port, head)
        assert status in (400, 401, 403)
    assert upstream.seen == []


def test_method_override_headers(harness: Harness, upstream: Upstream, agent: Agent) -> None:
    for header in ("X-HTTP-Method-Override: DELETE", "X-HTTP-Method: PUT",
                   "x-method-override: delete", "X-HTTP-Method-Override: GET, DELETE"):  # fmt: skip
        assert _send(harness, agent, "GET", "/v1/items/1", header) == 403, header
    assert upstream.seen == []
    assert _send(harness, agent, "GET", "/v1/items/1", "X-HTTP-Method-Override: HEAD") == 200
    assert upstream.seen[-1].header("x-http-method-override") == ["HEAD"]


def test_target_name_is_taken_raw(harness: Harness, upstream: Upstream, agent: Agent) -> None:
    for raw in ("/t/%61pi/v1/items", "/t/API/v1/items", "/t/api", "/t/./api/v1/items"):
        headers = agent.headers("GET", harness.url + raw)
        lines = [f"GET {raw} HTTP/1.1", "Host: x", f"Authorization: {headers['Authorization']}",
                 f"DPoP: {headers['DPoP']}"]  # fmt: skip
        status, _ = raw_request(harness.port, "\r\n".join(lines).encode())
        assert status == 404, raw
    assert upstream.seen == []


def test_the_forwarded_target_is_what_the_policy_saw(
    harness: Harness, upstream: Upstream, agent: Agent
) -> None:
    path = "/v1/a%20b/caf%C3%A9/x-y_z~!$&'()*+,=:@?q=%00&r=a%2Fb&s"
    assert _send(harness, agent, "GET", path) == 200
    assert upstream.seen[-1].target == path
    decision = harness.events("decision", target="api")[-1]
    assert decision.action["http"]["path"] == path.partition("?")[0]
