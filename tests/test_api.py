"""The HTTP API through httpx's ASGI transport: health, decisions, problem details."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tether.api import AppState, PolicyHolder, create_app
from tether.api.app import MAX_BODY_BYTES
from tether.policy import PolicySet, PolicySource, load_policies

POLICY = """\
rules:
  - id: bot-search
    effect: allow
    agents: [bot]
    targets: [github]
    mcp: {tools: ["search_*"]}
  - id: no-delete
    effect: deny
    targets: ["*"]
    mcp: {tools: ["delete_*"]}
"""

ALLOWED = {
    "agent": {"id": "bot"},
    "target": {"name": "github"},
    "action": {"mcp": {"tool": "search_code", "arguments": {}}},
}


def policy_set(text: str = POLICY) -> PolicySet:
    return load_policies([PolicySource("a.yaml", text)])


@pytest.fixture
def holder() -> PolicyHolder:
    return PolicyHolder(policy_set())


@pytest.fixture
async def client(holder: PolicyHolder) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AppState(holder))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether") as client:
        yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == "about:blank"
    assert body["status"] == status
    assert body["title"]
    assert "Traceback" not in response.text
    return body


async def test_healthz(client: httpx.AsyncClient, holder: PolicyHolder) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "policy_version": holder.current.version,
        "rules": 2,
    }


async def test_decide_allow(client: httpx.AsyncClient, holder: PolicyHolder) -> None:
    response = await client.post("/v1/decide", json=ALLOWED)
    assert response.status_code == 200
    assert response.json() == {
        "decision": "allow",
        "rule": "bot-search",
        "reason": "allowed",
        "policy_version": holder.current.version,
    }


async def test_decide_deny(client: httpx.AsyncClient) -> None:
    request = {**ALLOWED, "action": {"mcp": {"tool": "delete_repo", "arguments": {}}}}
    response = await client.post("/v1/decide", json=request)
    assert response.status_code == 200
    assert response.json()["decision"] == "deny"
    assert response.json()["reason"] == "denied-by-rule"


async def test_answer_is_the_engines_decision(
    client: httpx.AsyncClient, holder: PolicyHolder
) -> None:
    request = {**ALLOWED, "scope": {"targets": ["jira"]}}
    response = await client.post("/v1/decide", json=request)
    assert response.json() == holder.current.decide(request).to_dict()


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        "a string",
        {"agent": {"id": "bot"}},
        {"agent": {"id": "bot"}, "target": {"name": "github"}, "action": {"nope": {}}},
    ],
)
async def test_json_that_is_not_a_request_is_denied(client: httpx.AsyncClient, body: Any) -> None:
    response = await client.post("/v1/decide", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["decision"], answer["reason"], answer["rule"]) == (
        "deny", "invalid-request", None
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "request body: not JSON: "),
        (b"", "request body: not JSON: Expecting value"),
        (b'{"agent": 1, "agent": 2}', "request body: duplicate key 'agent'"),
        (b'{"n": NaN}', "request body: not JSON: NaN is not a JSON value"),
        (b'{"a": "\xff"}', "request body: not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "request body: not JSON: nested too deeply"),
    ],
)
async def test_body_that_is_not_json_is_a_400_problem(
    client: httpx.AsyncClient, body: bytes, detail: str
) -> None:
    response = await client.post(
        "/v1/decide", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 400)
    assert problem["title"] == "Bad Request"
    assert problem["detail"].startswith(detail)


async def test_oversized_body_is_a_413_problem(client: httpx.AsyncClient) -> None:
    body = json.dumps({**ALLOWED, "pad": "x" * MAX_BODY_BYTES}).encode()
    assert_problem(await client.post("/v1/decide", content=body), 413)


async def test_routing_errors_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nope"), 404)
    assert_problem(await client.get("/v1/decide"), 405)


async def test_swapping_the_policy_set(client: httpx.AsyncClient, holder: PolicyHolder) -> None:
    old = holder.current.version
    holder.replace(policy_set(POLICY.replace('"search_*"', '"list_*"')))
    assert holder.current.version != old
    health = (await client.get("/healthz")).json()
    assert health["policy_version"] == holder.current.version
    answer = (await client.post("/v1/decide", json=ALLOWED)).json()
    assert (answer["decision"], answer["policy_version"]) == ("deny", holder.current.version)


async def test_openapi_documents_decide(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    decide = spec["paths"]["/v1/decide"]["post"]
    schema = decide["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["agent", "target", "action"]
    assert "400" in decide["responses"]


class ExplodingPolicySet:
    version = "sha256:boom"
    rules = ()

    def decide(self, request: object) -> Any:
        raise RuntimeError("secret internal state")


async def test_a_crash_is_a_500_problem_without_internals() -> None:
    app = create_app(AppState(PolicyHolder(ExplodingPolicySet())))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether") as client:
        response = await client.post("/v1/decide", json=ALLOWED)
    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert body["detail"] == "internal error; see the server log"
