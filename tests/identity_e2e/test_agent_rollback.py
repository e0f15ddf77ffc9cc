"""An agent disabled, then its earlier row (and seal) written back, on SQLite and PostgreSQL
(migration 0022, tether.crypto.revisions; docs/vault.md, "Tampering with the database").
The earlier row's seal verifies: a node that never saw the later row takes the agent back
(the control, below). A node that admitted the later row refuses the older one, running or
restarted with its file (``<data_dir>/revisions.json``), for every use of the agent: its
tokens, new tokens, its enabling. Disabling it seals it again, and enabling it afterwards
works: the operator's way back."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.identity_e2e.conftest import Agent, Stack, build_service, join_form
from tether.crypto.revisions import RowRevisions
from tether.identity.errors import TokenRevoked
from tether.identity.revision_copy import RevisionCopy, read_marks
from tether.identity.service import IdentityService
from tether.store import agents as agent_store
from tether.store.identity import AgentNotActive
from tether.store.schema import agents

OLDER = r"agent 'bot' refused: its row is revision (\d+), older than revision (\d+) this node saw"


async def _node(stack: Stack, revisions: Path | None) -> IdentityService:
    """A node as ``tether serve`` builds it: its revisions file held, then the database."""
    copy = None if revisions is None else RevisionCopy(revisions, RowRevisions())
    return await build_service(stack.store, stack.clock, stack.cipher, revision_copy=copy)


async def _row(stack: Stack) -> dict[str, Any]:
    async with stack.engine.connect() as conn:
        found = await conn.execute(select(agents).where(agents.c.id == "bot"))
        return dict(found.mappings().one())


async def _put_back(stack: Stack, row: dict[str, Any]) -> None:
    """The agent's row as it was (its seal, written by Tether then, included)."""
    async with stack.engine.begin() as conn:
        await conn.execute(update(agents).where(agents.c.id == "bot").values(row))


async def test_a_disabled_agent_put_back_stays_refused(
    stack: Stack, bot: Agent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data" / "revisions.json"
    stack.service = node = await _node(stack, path)
    await stack.present(bot)  # the node admits the agent's row: revision 1
    pending, _ = await node.create_join_token("bot")  # made before, exchanged after
    active = await _row(stack)
    assert active["revision"] == 1
    await node.set_agent_state("bot", "disabled")
    assert [(m.key, m.revision) for m in read_marks(path) if m.table == "agents"] == [
        ("bot", 2)
    ]  # before answering
    with pytest.raises(TokenRevoked, match="the agent is disabled"):
        await stack.present(bot)
    await _put_back(stack, active)

    # The control: a node that never saw revision 2 takes the agent back.
    stack.service = await _node(stack, None)
    await stack.present(bot)

    # The running node (its poll re-reads the agent) and a restarted one refuse it.
    stack.service = node
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        await node.agent_states.refresh()
        await node.agent_states.refresh()  # logged once, not at every poll
        with pytest.raises(TokenRevoked, match="the agent is unverified"):
            await stack.present(bot)
    assert caplog.text.count("older than revision 2 this node saw") == 1, caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        stack.service = restarted = await _node(stack, path)
        with pytest.raises(TokenRevoked, match="the agent is unverified"):
            await stack.present(bot)
        with pytest.raises(AgentNotActive):  # nothing new is issued to it
            await stack.join(bot, task="T-2")
        with pytest.raises(TokenRevoked, match="the agent is not active"):
            await stack.exchange(bot, join_form(pending, "T-2"))
        with pytest.raises(agent_store.AgentUnverified):  # nor is it enabled as it stands
            await restarted.set_agent_state("bot", "active")
    found = re.search(OLDER, caplog.text)
    assert found is not None and found.groups() == ("1", "2"), caplog.text

    # The way back: disabled (sealed again above both), reviewed, enabled on purpose.
    disabled = await restarted.set_agent_state("bot", "disabled")
    assert disabled is not None and disabled.revision == 3
    enabled = await restarted.set_agent_state("bot", "active")
    assert enabled is not None and (enabled.state, enabled.revision) == ("active", 4)
    await stack.present(bot)
    await stack.join(bot, task="T-3")
    assert [(m.key, m.revision) for m in read_marks(path) if m.table == "agents"] == [("bot", 4)]


async def test_changes_through_tether_are_never_refused(stack: Stack, bot: Agent) -> None:
    """Another node's changes are later rows: each is admitted, and so are the nodes' own."""
    node_a, node_b = await _node(stack, None), await _node(stack, None)
    stack.service = node_a
    for node, state in ((node_b, "disabled"), (node_a, "active"), (node_b, "disabled"),
                        (node_b, "active")):  # fmt: skip
        await node.set_agent_state("bot", state)
        await node_a.agent_states.refresh()
        if state == "active":
            await stack.present(bot)
        else:
            with pytest.raises(TokenRevoked, match="the agent is disabled"):
                await stack.present(bot)
    assert (await _row(stack))["revision"] == 5
    await stack.join(bot, task="T-2")


async def test_a_row_from_before_revisions_is_admitted_and_then_revised(
    stack: Stack, bot: Agent
) -> None:
    """A row sealed before migration 0022 (revision 0, no revision in its seal)."""
    row = await _row(stack)
    columns = {name: row[name] for name in ("id", "owner", "labels", "state")}
    old = {"revision": 0, "seal": stack.cipher.sealer.seal("agents", columns)}
    async with stack.engine.begin() as conn:
        await conn.execute(update(agents).where(agents.c.id == "bot").values(old))
    stack.service = node = await _node(stack, None)
    await stack.present(bot)
    disabled = await node.set_agent_state("bot", "disabled")
    assert disabled is not None and disabled.revision == 1  # sealed with its revision now
    await node.agent_states.refresh()
    with pytest.raises(TokenRevoked, match="the agent is disabled"):
        await stack.present(bot)
