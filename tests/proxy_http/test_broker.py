"""The broker end to end: a real node, a real upstream, httpx and curl as agents."""

from __future__ import annotations

import httpx

from .conftest import Harness, curl, curl_status
from .upstream import Upstream


def test_allowed_request_reaches_the_target_with_the_credential(
    harness: Harness, upstream: Upstream
) -> None:
    harness.put_secret("api-key", b"s3cr3t-value")
    harness.add_target(
        "api", {"env": "test"}, base_url=upstream.url,
        credential={"type": "header", "secret": "api-key", "header_name": "X-Api-Key"},
    )  # fmt: skip
    agent = harness.agent()
    url = f"{harness.url}/t/api/v1/items/7"
    headers = {**agent.headers("GET", url), "X-Api-Key": "agent-forged", "Cookie": "a=1",
               "X-Forwarded-For": "10.0.0.1", "Accept": "application/json"}  # fmt: skip
    response = httpx.get(url + "?expand=lines&page=2", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["target"] == "/v1/items/7?expand=lines&page=2"
    assert "x-request-id" in response.headers
    seen = upstream.seen[-1]
    assert seen.target == "/v1/items/7?expand=lines&page=2"
    assert seen.header("x-api-key") == ["s3cr3t-value"]
    assert seen.header("authorization") == [] and seen.header("dpop") == []
    assert seen.header("cookie") == [] and seen.header("x-forwarded-for") == []
    assert seen.header("accept") == ["application/json"]
    assert seen.header("host") == [f"127.0.0.1:{upstream.port}"]

    decisions = harness.events("decision", target="api")
    assert decisions[-1].decision == "allow" and decisions[-1].rule == "read-api"
    assert decisions[-1].action["http"]["path"] == "/v1/items/7"
    assert list(decisions[-1].action["http"]["query_keys"]) == ["expand", "page"]
    exchange = harness.exchanges(1, target="api")[-1]
    assert exchange.action["method"] == "GET" and exchange.action["path"] == "/v1/items/7"
    assert exchange.action["status"] == 200 and exchange.decision == "allow"
    assert exchange.rule == "read-api" and exchange.bytes_out == len(response.content)
    assert list(exchange.detail["query_keys"]) == ["expand", "page"]
    assert exchange.detail["policy_version"] and exchange.duration_ms is not None
    assert decisions[-1].seq < exchange.seq  # decided and recorded before forwarding
    assert "lines" not in repr(exchange) and "s3cr3t" not in repr(harness.events())


def test_refusals_are_problems(harness: Harness, upstream: Upstream) -> None:
    harness.add_target("api", base_url=upstream.url)
    agent = harness.agent()
    before = len(upstream.seen)

    url = f"{harness.url}/t/api/v1/admin/users"
    denied = httpx.get(url, headers=agent.headers("GET", url))
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    body = denied.json()
    assert (body["reason"], body["rule"]) == ("denied-by-rule", "no-admin")
    assert body["request_id"] == denied.headers["x-request-id"]

    url = f"{harness.url}/t/api/v1/items/3"
    needs = httpx.delete(url, headers=agent.headers("DELETE", url))
    assert needs.status_code == 403
    assert needs.json()["decision"] == "approval_required"
    assert needs.json()["rule"] == "delete-needs-approval"
    assert "delete-needs-approval" in needs.json()["detail"]

    url = f"{harness.url}/t/api/other"
    default = httpx.post(url, headers=agent.headers("POST", url), content=b"x")
    assert default.status_code == 403 and default.json()["reason"] == "default-deny"

    url = f"{harness.url}/t/nope/v1/x"
    missing = httpx.get(url, headers=agent.headers("GET", url))
    assert missing.status_code == 404 and missing.json()["request_id"]

    anonymous = httpx.get(f"{harness.url}/t/api/v1/items")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("DPoP algs=")

    assert len(upstream.seen) == before  # nothing refused reached the target
    kinds = [(e.kind, e.decision, e.reason) for e in harness.events()]
    assert ("decision", "deny", "denied-by-rule") in kinds
    assert ("decision", "approval_required", "approval-needed") in kinds
    assert ("token.refused", "deny", "no access token") in kinds


def test_curl_as_the_agent(harness: Harness, upstream: Upstream) -> None:
    harness.put_secret("tok", b"bearer-xyz")
    harness.add_target(
        "api", base_url=upstream.url + "/base/",
        credential={"type": "bearer", "secret": "tok"},
    )  # fmt: skip
    agent = harness.agent()
    url = f"{harness.url}/t/api/v1/things"
    headers = agent.headers("GET", url)
    done = curl(url, "-H", f"Authorization: {headers['Authorization']}",
                "-H", f"DPoP: {headers['DPoP']}")  # fmt: skip
    status, body = curl_status(done)
    assert status == 200, done
    assert upstream.seen[-1].target == "/base/v1/things"
    assert upstream.seen[-1].header("authorization") == ["Bearer bearer-xyz"]
    assert b"bearer-xyz" not in body


def test_upstream_failures_are_502_and_504(harness: Harness, upstream: Upstream) -> None:
    closed = socket_port()
    harness.add_target("down", base_url=f"http://127.0.0.1:{closed}")
    harness.add_target("sluggish", base_url=upstream.url, read_timeout=0.3)
    agent = harness.agent()
    url = f"{harness.url}/t/down/v1/x"
    down = httpx.get(url, headers=agent.headers("GET", url))
    assert down.status_code == 502 and down.json()["request_id"]
    url = f"{harness.url}/t/sluggish/slow"
    slow = httpx.get(url + "?s=2", headers=agent.headers("GET", url))
    assert slow.status_code == 504
    statuses = {e.target: e.action["status"] for e in harness.exchanges(2)}
    assert statuses == {"down": 502, "sluggish": 504}


def test_keep_alive_to_the_upstream(harness: Harness, upstream: Upstream) -> None:
    harness.add_target("api", base_url=upstream.url)
    agent = harness.agent()
    with httpx.Client() as client:
        for i in range(5):
            url = f"{harness.url}/t/api/v1/n/{i}"
            assert client.get(url, headers=agent.headers("GET", url)).status_code == 200
    assert upstream.connections == 1
    reused = [e.detail["upstream_connection"] for e in harness.exchanges(5)]
    assert reused == ["new", "reused", "reused", "reused", "reused"]


def socket_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
