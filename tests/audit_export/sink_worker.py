"""A sink delivery process for the crash test: ``python -m tests.audit_export.sink_worker
DB_URL OUT [--until-caught-up | --hang-after-write N]``.

It delivers the trail to a JSON Lines sink in batches of 100, printing ``batch N`` after
each. With ``--until-caught-up`` it exits once nothing is left; with ``--hang-after-write
N`` the N-th batch is written and fsynced, ``written`` is printed, and the process hangs
before its cursor moves: the window where a crash leaves an acknowledged but unrecorded
batch. Otherwise it goes on until it is killed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from tether.audit.events import AuditEvent
from tether.audit.sinks.base import DeliveryLoop
from tether.audit.sinks.config import JsonlSinkConfig
from tether.audit.sinks.jsonl import JsonlSink
from tether.store import Store


class HangingSink(JsonlSink):
    def __init__(self, config: JsonlSinkConfig, hang_at: int) -> None:
        super().__init__(config)
        self.hang_at = hang_at
        self.batches = 0

    async def deliver(self, events: Sequence[AuditEvent]) -> None:
        await super().deliver(events)
        self.batches += 1
        if self.batches == self.hang_at:
            print("written", flush=True)
            await asyncio.sleep(3600)


async def main(url: str, out: Path, until_caught_up: bool, hang_at: int) -> None:
    store = await Store.open(url)
    config = JsonlSinkConfig(name="file", kind="jsonl", path=out)
    sink = HangingSink(config, hang_at)
    loop = DeliveryLoop(sink, store.engine, batch_size=100, node_id="worker")
    try:
        while True:
            count = await loop.deliver_once()
            print(f"batch {count}", flush=True)
            if count == 0:
                if until_caught_up:
                    return
                await asyncio.sleep(0.01)
    finally:
        await loop.sink.close()
        await store.close()


if __name__ == "__main__":
    hang = int(sys.argv[4]) if sys.argv[3:4] == ["--hang-after-write"] else 0
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), "--until-caught-up" in sys.argv, hang))
