"""These tests run the broker on the loop ``tether serve`` runs (uvloop), not another one."""

import asyncio

import uvloop


async def test_runs_on_the_nodes_event_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
