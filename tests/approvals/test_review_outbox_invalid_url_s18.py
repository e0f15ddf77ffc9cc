"""A webhook URL that httpx cannot build (a typo in the port) passed the config check
(^https?://), and at the first delivery raised httpx.InvalidURL, not an httpx.HTTPError:
the node's delivery loop died silently, no notification to any webhook delivered again.
Now the configuration refuses such a URL, and a delivery that fails so (a URL given past
the configuration) gives up that entry and goes on."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.approvals.test_notify import SECRET, Receiver, Served, sample_request
from tether.approvals.config import ApprovalsConfig
from tether.approvals.notify import Webhook, WebhookNotifier
from tether.store import Store


async def test_a_bad_webhook_url_does_not_stop_every_delivery(tmp_path: Path) -> None:
    bad_url = "https://hooks.example.com:44a/services/x"
    with pytest.raises(ValidationError, match="not a valid URL"):
        ApprovalsConfig.model_validate(
            {"webhooks": [{"group": "sre", "url": bad_url, "secret": "x"}]}
        )
    app = Receiver()
    served = Served(app)
    await served.start()
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    hooks = [Webhook("sre", bad_url, SECRET, 2.0), Webhook("*", served.base + "/all", SECRET, 2.0)]
    notifier = WebhookNotifier(store.engine, hooks, retries=2, backoff=0.05)
    stop = asyncio.Event()
    worker = asyncio.create_task(notifier.run(stop))
    try:
        first = dataclasses.replace(sample_request("ar_sre"), approvers=("group:sre",))
        async with store.engine.begin() as conn:
            await notifier.enqueue(conn, first)
        notifier.wake()
        await asyncio.sleep(1.0)
        second = sample_request("ar_fin")  # group:finance: only the "*" webhook
        async with store.engine.begin() as conn:
            await notifier.enqueue(conn, second)
        notifier.wake()
        async with asyncio.timeout(8):
            while not any(h.get("x-tether-delivery") == "ar_fin" for _, h, _ in app.seen):
                assert not worker.done(), f"delivery loop died: {worker.exception()!r}"
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        if not worker.done():
            await worker
        await store.close()
        await served.stop()
