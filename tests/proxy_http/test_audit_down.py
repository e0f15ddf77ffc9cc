"""Invariant 5 on the HTTP broker: no audit event, no effect.

With the audit trail down (the writer stopped, as when the store is gone), an allowed
request and an allowed WebSocket upgrade are both refused with 503, and nothing reaches the
target: not the request, not the upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .conftest import Harness
from .upstream import Upstream
from .wsupstream import WsUpstream

POLICY = """
rules:
  - id: read
    effect: allow
    agents: [bot]
    http: {methods: [GET], paths: ["/v1/**", "/echo"]}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Harness, Upstream, WsUpstream]]:
    plain, ws = Upstream().start(), WsUpstream().start()
    harness = Harness(tmp_path, POLICY)
    harness.add_target("api", base_url=plain.url)
    harness.add_target("ws", base_url=ws.url)
    yield harness, plain, ws
    harness.stop()
    plain.stop()
    ws.stop()


def test_nothing_is_forwarded_while_the_audit_trail_is_down(
    node: tuple[Harness, Upstream, WsUpstream],
) -> None:
    harness, plain, ws = node
    agent = harness.agent()
    url = f"{harness.url}/t/api/v1/items"
    before = httpx.get(url, headers=agent.headers("GET", url), timeout=30)
    assert before.status_code == 200 and len(plain.seen) == 1  # the path works while audited

    harness.run(harness.auditor.log.close())  # the trail is down from here on

    refused = httpx.get(url, headers=agent.headers("GET", url), timeout=30)
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "audit" in refused.json()["detail"]
    assert len(plain.seen) == 1  # the refused request never reached the target

    ws_url = f"{harness.url}/t/ws/echo"
    with pytest.raises(InvalidStatus) as upgrade:
        connect(
            "ws" + ws_url.removeprefix("http"), additional_headers=agent.headers("GET", ws_url),
            proxy=None, open_timeout=10, ping_interval=None,
        )  # fmt: skip
    assert upgrade.value.response.status_code == 503
    assert ws.seen == []  # no upgrade was sent to the target
