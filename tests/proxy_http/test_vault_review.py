"""The vault as the broker uses it, attacked: a secret whose ciphertext was swapped in the
database, and token endpoints that answer what a broken or hostile server would. Each must
be a 502 problem answer with the reason in the audit trail, never an internal error."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select, update

from tether.vault.schema import targets, vault_secrets

from .conftest import Agent, Harness
from .rawupstream import RawUpstream, ok
from .upstream import Upstream


def _get(harness: Harness, agent: Agent, target: str) -> httpx.Response:
    url = f"{harness.url}/t/{target}/v1/x"
    return httpx.get(url, headers=agent.headers("GET", url), timeout=30)


def _refused_and_audited(harness: Harness, response: httpx.Response, secret: bytes) -> str:
    assert response.status_code == 502, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "credential is not usable" in response.json()["detail"]
    assert secret.decode() not in response.text
    (event,) = harness.exchanges(1)
    assert event.action["status"] == 502 and secret.decode() not in repr(event)
    reason: str = event.detail["credential_error"]
    return reason


def test_a_ciphertext_copied_from_another_secret_is_a_502(
    harness: Harness, upstream: Upstream
) -> None:
    harness.put_secret("a-key", b"value-of-a")
    harness.put_secret("b-key", b"value-of-b")
    harness.add_target("api", base_url=upstream.url,
                       credential={"type": "bearer", "secret": "a-key"})  # fmt: skip

    async def swap() -> None:  # a database writer makes a-key's row hold b-key's value
        async with harness.store.engine.begin() as conn:
            column = vault_secrets.c.ciphertext
            other = select(column).where(vault_secrets.c.name == "b-key")
            moved = (await conn.execute(other)).scalar_one()
            await conn.execute(
                update(vault_secrets)
                .where(vault_secrets.c.name == "a-key")
                .values(ciphertext=moved)
            )

    harness.run(swap())
    time.sleep(1.1)  # the node's one-second cache of a-key (if any) has expired
    agent = harness.agent()
    response = _get(harness, agent, "api")
    reason = _refused_and_audited(harness, response, b"value-of-b")
    assert "a-key" in reason and "cannot be decrypted" in reason
    assert upstream.seen == []  # nothing was sent, b-key's value least of all


@pytest.mark.parametrize(
    "answer",
    [
        b'{"access_token": "\xc3\xa9t\xc3\xa9"}',
        b'{"access_token": "t", "expires_in": NaN}',
        b'{"access_token": "t", "expires_in": "soon"}',
    ],
    ids=["non-ascii-token", "nan", "not-a-number"],
)
def test_a_nonsensical_token_answer_is_a_502(harness: Harness, answer: bytes) -> None:
    endpoint = RawUpstream(lambda seen: ok(answer)).start()
    try:
        _oauth_target(harness, endpoint)
        response = _get(harness, harness.agent(), "api")
        reason = _refused_and_audited(harness, response, b"client-secret-1")
        assert "OAuth token" in reason
        assert [seen.target for seen in endpoint.seen] == ["/token"]  # nothing forwarded
    finally:
        endpoint.stop()


def test_a_lifetime_past_a_float_is_capped_not_a_crash(harness: Harness) -> None:
    # int("9" * 400) cannot become a float: it was an OverflowError out of the broker (500,
    # audited without a reason); now the lifetime is capped and the token used.
    answer = b'{"access_token": "tok-1", "expires_in": ' + b"9" * 400 + b"}"
    endpoint = RawUpstream(lambda seen: ok(answer)).start()
    try:
        _oauth_target(harness, endpoint)
        assert _get(harness, harness.agent(), "api").status_code == 200
        assert endpoint.seen[-1].header("authorization") == ["Bearer tok-1"]
    finally:
        endpoint.stop()


def _oauth_target(harness: Harness, endpoint: RawUpstream) -> None:
    harness.put_secret("client", b"client-secret-1")
    harness.add_target("api", base_url=endpoint.url, credential={
        "type": "oauth2_client_credentials", "token_url": endpoint.url + "/token",
        "client_id": "c", "secret": "client",
    })  # fmt: skip


def test_a_target_row_that_no_longer_validates_is_an_audited_502(
    harness: Harness, upstream: Upstream
) -> None:
    harness.put_secret("k", b"value-of-k")
    harness.add_target("api", base_url=upstream.url, credential={"type": "bearer", "secret": "k"})

    async def edit() -> None:  # a database writer points the target at Tether's own CA key
        spec = {"base_url": upstream.url,
                "credential": {"type": "bearer", "secret": "tether/ssh-target-ca"}}  # fmt: skip
        async with harness.store.engine.begin() as conn:
            await conn.execute(update(targets).where(targets.c.name == "api").values(spec=spec))

    harness.run(edit())
    time.sleep(1.1)  # the node's one-second cache of the target has expired
    agent = harness.agent()
    response = _get(harness, agent, "api")
    # Was a 500 with a traceback, and no audit event of the request at all.
    assert response.status_code == 502, response.text
    assert "definition of target 'api' is invalid" in response.json()["detail"]
    (event,) = harness.exchanges(1)
    assert (event.target, event.decision) == ("api", "deny")
    assert event.action["status"] == 502 and event.detail["reason"] == "invalid-target"
    assert upstream.seen == []
