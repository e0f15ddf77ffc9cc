"""The store failing under the HTTP broker (not the audit trail, which has its own writer):
a request whose token, target or decision cannot be checked is refused with a 500 problem,
audited, and never forwarded. Before, the exception reached the server's last resort: a 500
with no audit event (invariant 5: every action, allowed or not, is audited).

The failures are real: the table the broker reads is renamed away under the running node,
then back, and the same request passes again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Agent, Harness
from .upstream import Upstream

POLICY = """
rules:
  - id: read
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/v1/**"]}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Harness, Upstream]]:
    upstream = Upstream().start()
    harness = Harness(tmp_path, POLICY)
    harness.add_target("api", base_url=upstream.url)
    yield harness, upstream
    harness.stop()
    upstream.stop()


def rename(harness: Harness, table: str, to: str) -> None:
    async def run() -> None:
        async with harness.store.engine.begin() as conn:
            await conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {to}")

    harness.run(run())


def get(harness: Harness, agent: Agent, path: str) -> httpx.Response:
    url = f"{harness.url}/t/api{path}"
    return httpx.get(url, headers=agent.headers("GET", url), timeout=30)


def refused_500(response: httpx.Response) -> str:
    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert "OperationalError" not in response.text and "no such table" not in response.text
    return str(body["request_id"])


def test_a_store_failure_is_refused_and_audited_never_forwarded(
    node: tuple[Harness, Upstream],
) -> None:
    harness, upstream = node
    agent = harness.agent()
    assert get(harness, agent, "/v1/a").status_code == 200 and len(upstream.seen) == 1

    # The agent's state cannot be read while its token is checked.
    rename(harness, "agents", "agents_away")
    harness.identity.agent_states.forget(agent.id)
    token_check = refused_500(get(harness, agent, "/v1/b"))
    rename(harness, "agents_away", "agents")

    # The target cannot be looked up (its cached row expires after a second).
    rename(harness, "targets", "targets_away")
    time.sleep(1.2)
    target_lookup = refused_500(get(harness, agent, "/v1/c"))
    rename(harness, "targets_away", "targets")

    assert len(upstream.seen) == 1  # neither refused request reached the target
    (refused,) = [
        e for e in harness.events("token.refused") if e.detail.get("request_id") == token_check
    ]
    assert refused.detail["error"] == "internal-error" and refused.detail["status"] == 500
    (failed,) = [e for e in harness.exchanges(2) if e.detail.get("request_id") == target_lookup]
    assert failed.detail == {"reason": "internal-error", "request_id": target_lookup}
    assert failed.decision == "deny" and failed.action["status"] == 500

    time.sleep(1.2)  # the store is back: the same request passes
    harness.identity.agent_states.forget(agent.id)
    assert get(harness, agent, "/v1/d").status_code == 200 and len(upstream.seen) == 2


def test_a_credential_the_store_cannot_read_is_a_500_never_forwarded(
    node: tuple[Harness, Upstream],
) -> None:
    """An allowed request to a target whose secret cannot be read (the vault's table is
    gone): a 500 problem naming the request, an ``http.exchange`` event saying so, and
    nothing sent to the target (was: a 500 from the last resort, the event silent on it)."""
    harness, upstream = node
    harness.put_secret("api-key", b"sk-live-0123456789")
    harness.add_target("keyed", base_url=upstream.url,
                       credential={"type": "bearer", "secret": "api-key"})  # fmt: skip
    agent = harness.agent()
    url = f"{harness.url}/t/keyed/v1/items"
    assert httpx.get(url, headers=agent.headers("GET", url), timeout=30).status_code == 200
    rename(harness, "vault_secrets", "vault_secrets_away")
    time.sleep(1.2)  # the secret's cached value expires
    failed = refused_500(httpx.get(url, headers=agent.headers("GET", url), timeout=30))
    rename(harness, "vault_secrets_away", "vault_secrets")
    assert len(upstream.seen) == 1
    (event,) = [e for e in harness.exchanges(2) if e.detail.get("request_id") == failed]
    assert event.action["status"] == 500 and event.detail["internal_error"] == "OperationalError"
    assert event.detail["error"] == "internal error; see the server log"
