"""A stolen token's renewals end with it, at the HTTP broker of a real node.

A thief holding an agent's token and its DPoP key renews it (twice: a chain); the admin
revokes the stolen token with ``tether revoke token`` (the CLI against the node's API):
every renewal is refused ``401 invalid_token`` from its next request, and so is the agent's
own token, which is of the same renewal family. Revoking a renewal ends the original too.
The admin event of the revocation names the family and the live tokens it ended.

Before the fix a renewal of an agent's own token named nothing it came from: revoking the
stolen token left the thief's renewal valid.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tether.audit.events import AuditEvent
from tether.cli.main import app
from tether.client import Session, decode_claims
from tether.identity.admintokens import create_admin_token

from .conftest import Agent, Harness
from .upstream import Upstream


@pytest.fixture
def node(tmp_path: Path, upstream: Upstream) -> Iterator[Harness]:
    made = Harness(tmp_path)
    made.add_target("api", base_url=upstream.url)
    yield made
    made.stop()


def _revoke(node: Harness, jti: str) -> str:
    """``tether revoke token JTI`` against the node, as an admin; the command's output."""
    admin, _ = node.run(
        create_admin_token(
            node.store.engine, node.identity.sealer, name="ops", now=dt.datetime.now(dt.UTC)
        )
    )
    environ = {"TETHER_ADMIN_TOKEN": admin, "TETHER_SERVER": node.url}
    # After "--": a jti may begin with "-" (random base64url: 1 in 64), as -YsZd... did once.
    argv = ["revoke", "token", "-r", "stolen", "--", jti]
    done = CliRunner().invoke(app, argv, env=environ)
    assert done.exit_code == 0, done.output
    return done.stdout


def _status(node: Harness, agent: Agent) -> int:
    url = f"{node.url}/t/api/v1/items"
    response = httpx.get(url, headers=agent.headers("GET", url))
    if response.status_code == 401:
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert response.json()["detail"] in (
            "the token is revoked",  # the one revoked, or the family's first
            "a token of its renewal family is revoked",
        )
    return response.status_code


def _renewed(node: Harness, holder: Agent) -> Agent:
    """The thief renews ``holder``'s token with the stolen key, as the SDK does."""
    session = Session(node.last_session.client, holder.key, holder.token, "T-1", "tests")
    session.renew()
    return Agent(holder.id, holder.key, session.token, node.url)


def _revocations(node: Harness) -> list[AuditEvent]:
    """The audited revocations, once there is one (an admin call is audited as it ends)."""
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in node.events("admin.change") if e.action["name"] == "revoke"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _jti(agent: Agent) -> str:
    return str(decode_claims(agent.token)["jti"])


@pytest.mark.parametrize("revoked", ["original", "first-renewal", "second-renewal"])
def test_revoking_any_token_of_a_renewal_chain_ends_all_of_it(node: Harness, revoked: str) -> None:
    agent = node.agent()
    first = _renewed(node, agent)
    second = _renewed(node, first)  # two renewals deep
    chain = {"original": agent, "first-renewal": first, "second-renewal": second}
    assert {decode_claims(a.token)["family"] for a in chain.values()} == {_jti(agent)}
    assert [_status(node, a) for a in chain.values()] == [200, 200, 200]

    output = _revoke(node, _jti(chain[revoked]))

    assert [_status(node, a) for a in chain.values()] == [401, 401, 401]
    if revoked != "original":
        assert f"its renewal family {_jti(agent)} is revoked with it" in output
    assert "ended 3 live credential(s)" in output
    (event,) = _revocations(node)
    assert event.detail["jti"] == _jti(chain[revoked])
    assert event.detail["family"] == _jti(agent)
    assert set(event.detail["ended"]) == {_jti(a) for a in chain.values()}


def test_a_renewal_of_another_agent_session_is_untouched(node: Harness) -> None:
    agent = node.agent()
    stolen = _renewed(node, agent)
    other = node.agent(task="T-2")  # the same agent joined again: another family
    _revoke(node, _jti(stolen))
    assert (_status(node, stolen), _status(node, agent), _status(node, other)) == (401, 401, 200)
