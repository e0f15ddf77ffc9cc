"""A target redirected in the database behind Tether's back (docs/vault.md, "Tampering
with the database"): the broker refuses it as an audited 502 and the attacker's server
never sees a connection; putting the target back through Tether makes it work again."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import select, update

from tether.vault.schema import targets

from .conftest import Agent, Harness
from .upstream import Upstream


def _get(harness: Harness, agent: Agent) -> httpx.Response:
    url = f"{harness.url}/t/api/v1/x"
    return httpx.get(url, headers=agent.headers("GET", url), timeout=30)


def test_a_target_redirected_in_the_database_is_refused(
    harness: Harness, upstream: Upstream
) -> None:
    attacker = Upstream().start()  # the server the database writer owns
    try:
        harness.put_secret("k", b"value-of-k")
        harness.add_target("api", base_url=upstream.url,
                           credential={"type": "bearer", "secret": "k"})  # fmt: skip
        agent = harness.agent()
        assert _get(harness, agent).status_code == 200
        assert upstream.seen[-1].header("authorization") == ["Bearer value-of-k"]

        async def redirect() -> None:  # a valid spec, the seal left as it was
            async with harness.store.engine.begin() as conn:
                spec = (
                    await conn.execute(select(targets.c.spec).where(targets.c.name == "api"))
                ).scalar_one()
                await conn.execute(
                    update(targets)
                    .where(targets.c.name == "api")
                    .values(spec={**spec, "base_url": attacker.url})
                )

        harness.run(redirect())
        time.sleep(1.1)  # the node's one-second cache of the target has expired
        response = _get(harness, agent)
        assert response.status_code == 502, response.text
        assert "definition of target 'api' is invalid" in response.json()["detail"]
        event = harness.exchanges(2)[-1]
        assert (event.target, event.decision) == ("api", "deny")
        assert event.action["status"] == 502 and event.detail["reason"] == "invalid-target"
        assert attacker.connections == 0 and attacker.seen == []

        # Put back through Tether (what `tether target add --replace` does): sealed again.
        harness.add_target("api", base_url=upstream.url,
                           credential={"type": "bearer", "secret": "k"}, replace=True)  # fmt: skip
        assert _get(harness, agent).status_code == 200
        assert attacker.connections == 0
    finally:
        attacker.stop()


def test_a_target_put_back_after_it_moved_is_refused(harness: Harness, upstream: Upstream) -> None:
    """Migration 0025: the target's earlier row, sealed by Tether when it pointed at an
    address that is no longer ours (now the attacker's), written back after the target moved:
    the node saw the move, so it refuses the older row; nothing reaches the old address."""
    old_address = Upstream().start()
    try:
        harness.put_secret("k", b"value-of-k")
        harness.add_target("api", base_url=old_address.url,
                           credential={"type": "bearer", "secret": "k"})  # fmt: skip
        agent = harness.agent()
        assert _get(harness, agent).status_code == 200

        async def row() -> dict[str, object]:
            async with harness.store.engine.connect() as conn:
                found = await conn.execute(select(targets).where(targets.c.name == "api"))
                return dict(found.mappings().one())

        earlier = harness.run(row())
        harness.add_target("api", base_url=upstream.url,
                           credential={"type": "bearer", "secret": "k"}, replace=True)  # fmt: skip
        assert _get(harness, agent).status_code == 200
        served = len(old_address.seen)

        async def put_back() -> None:
            async with harness.store.engine.begin() as conn:
                await conn.execute(update(targets).where(targets.c.name == "api").values(earlier))

        harness.run(put_back())
        time.sleep(1.1)  # the node's one-second cache of the target has expired
        response = _get(harness, agent)
        assert response.status_code == 502, response.text
        assert harness.exchanges(3)[-1].detail["reason"] == "invalid-target"
        assert len(old_address.seen) == served  # the credential never went there again
    finally:
        old_address.stop()
