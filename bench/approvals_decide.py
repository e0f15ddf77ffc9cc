"""What approvals add to a decision: ``ApprovalService.decide`` against ``PolicySet.decide``.

Three cases on one SQLite store, each against the bare engine deciding the same request
(the baseline, measured in the same run):

* ``allowed``: a rule without approval allows the action -- no grant lookup at all;
* ``held``: a rule needs approval and a grant is held -- digest, one indexed query, a
  second decision;
* ``pending``: no grant yet -- the pending request is found (the ask path of a retry).

Prints one line per case (median microseconds and the ratio to the baseline); ``--json``
prints one JSON object per case. Exits 0 whatever the figures (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tether.approvals.service import ApprovalService
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.policy import PolicySource, load_policies
from tether.store import Store
from tether.store import agents as agent_store
from tether.users.service import UserService

POLICY = """
rules:
  - id: read
    effect: allow
    agents: [bot]
    targets: [web]
    ssh: {commands: ["systemctl status *"]}
  - id: restart
    effect: allow
    agents: [bot]
    targets: [web]
    ssh: {commands: ["systemctl restart *"]}
    approval: {approvers: ["group:sre"], valid_for: 1h}
"""


def request(command: str) -> dict[str, Any]:
    return {"agent": {"id": "bot"}, "task": {"id": "T-1"}, "target": {"name": "web"},
            "action": {"ssh": {"command": command}}}  # fmt: skip


async def timed(call: Callable[[], Awaitable[object]], n: int) -> float:
    samples = []
    for _ in range(n):
        began = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - began)
    return statistics.median(samples) / 1000


async def main(n: int, as_json: bool) -> None:
    policy_set = load_policies([PolicySource("b.yaml", POLICY)])
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite+aiosqlite:///{Path(tmp) / 'b.db'}")
        try:
            cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "bench"))
            async with store.engine.begin() as conn:
                await agent_store.create_agent(conn, cipher.sealer, id="bot", owner="o", now=_now())
            service = ApprovalService(store.engine, lambda: policy_set, cipher.sealer)
            users = UserService(store.engine, cipher)
            sam = await users.add("sam", password=None, groups=["sre"])
            _, pending = await service.decide(request("systemctl restart app"))
            assert pending is not None
            await service.approve(pending.id, sam, "bench")
            await service.decide(request("systemctl restart db"))  # stays pending
            cases = {"allowed": "systemctl status app", "held": "systemctl restart app",
                     "pending": "systemctl restart db"}  # fmt: skip
            for name, command in cases.items():
                value = request(command)

                async def bare(value: dict[str, Any] = value) -> object:
                    return policy_set.decide(value)

                async def gated(value: dict[str, Any] = value) -> object:
                    return await service.decide(value)

                await timed(gated, 20)
                base, with_approvals = await timed(bare, n), await timed(gated, n)
                row = {"case": name, "engine_us": round(base, 1),
                       "with_approvals_us": round(with_approvals, 1),
                       "ratio": round(with_approvals / base, 1)}  # fmt: skip
                if as_json:
                    print(json.dumps(row))
                else:
                    print(f"{name:8} engine {base:8.1f} us   with approvals "
                          f"{with_approvals:8.1f} us   x{with_approvals / base:.1f}")  # fmt: skip
        finally:
            await store.close()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    asyncio.run(main(options.calls, options.json))
    sys.exit(0)
