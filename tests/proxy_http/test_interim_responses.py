"""A target's interim (1xx) responses do not stretch ``read_timeout`` (real node, a raw
upstream on loopback): each ``100 Continue`` restarted the wait, so a target sending one
every 0.1 s held the exchange, and the agent's connection, as long as it liked."""

from __future__ import annotations

import time

import httpx

from .conftest import Harness
from .rawupstream import RawSeen, RawUpstream, ok

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def test_interim_responses_do_not_stretch_the_read_timeout(harness: Harness) -> None:
    def answer(seen: RawSeen) -> list[bytes]:
        return [_CONTINUE] * 40 + [ok()]  # 4 s of interim answers, then a final one

    target = RawUpstream(answer).start()
    try:
        harness.add_target("api", base_url=target.url, read_timeout=0.5)
        agent = harness.agent()
        url = f"{harness.url}/t/api/v1/a"
        started = time.monotonic()
        response = httpx.get(url, headers=agent.headers("GET", url), timeout=30)
        assert response.status_code == 504, response.text
        assert time.monotonic() - started < 3.0
    finally:
        target.stop()


def test_a_few_interim_responses_within_the_timeout_still_pass(harness: Harness) -> None:
    def answer(seen: RawSeen) -> list[bytes]:
        return [_CONTINUE, _CONTINUE, ok(b"done")]  # 0.2 s of interim answers

    target = RawUpstream(answer).start()
    try:
        harness.add_target("api", base_url=target.url, read_timeout=5.0)
        agent = harness.agent()
        url = f"{harness.url}/t/api/v1/a"
        response = httpx.get(url, headers=agent.headers("GET", url), timeout=30)
        assert (response.status_code, response.text) == (200, "done")
    finally:
        target.stop()
