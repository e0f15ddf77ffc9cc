"""Pipelined reads: a target's ``pipeline_reads`` (docs/http-broker.md).

A GET or HEAD with no body, upgrade or method override goes to such a target while its
decision event commits; nothing of the answer reaches the agent before the commit, and a
failed commit is a 503 with the target's answer dropped. Every other request, and every
request to a target that did not opt in, waits for the commit before it is sent. The audit
writer is held on the node's loop so that each step can be observed on the wire.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote_plus

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.audit.writers import WriterError
from tether.proxy.http.broker import _pipelined
from tether.vault.target_specs import HttpTargetSpec

from .conftest import Agent, Harness
from .upstream import Upstream

POLICY = """
rules:
  - id: api
    effect: allow
    agents: [bot]
    http: {methods: [GET, HEAD, POST], paths: ["/v1/**"]}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Harness, Upstream]]:
    upstream = Upstream().start()
    harness = Harness(tmp_path, POLICY)
    harness.add_target("reads", base_url=upstream.url, pipeline_reads=True)
    harness.add_target("plain", base_url=upstream.url)
    yield harness, upstream
    for held in HeldWriter.made:  # a failed test must not leave the trail's close waiting
        held.release()
    HeldWriter.made.clear()
    harness.stop()
    upstream.stop()


class HeldWriter:
    """Holds every audit commit until ``release`` (failing them all with ``fail=True``)."""

    made: ClassVar[list[HeldWriter]] = []

    def __init__(self, harness: Harness, *, fail: bool = False) -> None:
        self.made.append(self)
        self.harness, self.fail = harness, fail
        self.writer = harness.auditor.log._writer
        self.original = self.writer.write
        self.open = asyncio.Event()

        async def write(batch: Any) -> Any:
            await self.open.wait()
            if self.fail:
                raise WriterError("the disk is gone", transient=False)
            return await self.original(batch)

        self.writer.write = write  # type: ignore[method-assign]

    def release(self) -> None:
        self.harness.loop.call_soon_threadsafe(self.open.set)


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def send(
    pool: ThreadPoolExecutor, harness: Harness, agent: Agent, method: str, path: str, **kw: Any
) -> Future[httpx.Response]:
    url = f"{harness.url}{path}"
    headers = {**agent.headers(method, url), **kw.pop("headers", {})}
    return pool.submit(httpx.request, method, url, headers=headers, timeout=30, **kw)


def test_a_read_reaches_the_target_while_its_event_commits_and_its_answer_waits(
    node: tuple[Harness, Upstream],
) -> None:
    harness, upstream = node
    agent = harness.agent()  # its token's issue is audited: before the writer is held
    held = HeldWriter(harness)
    with ThreadPoolExecutor(1) as pool:
        answer = send(pool, harness, agent, "GET", "/t/reads/v1/items/7")
        wait_for(lambda: len(upstream.seen) == 1)  # forwarded with the commit still held
        time.sleep(0.3)
        assert not answer.done()  # and nothing answered before the commit
        assert harness.events("decision") == []
        held.release()
        response = answer.result(30)
    assert response.status_code == 200 and response.json()["target"] == "/v1/items/7"
    (decision,) = harness.events("decision")
    (exchange,) = harness.exchanges(1)
    assert decision.decision == "allow" and decision.rule == "api"
    assert exchange.action["status"] == 200 and exchange.seq > decision.seq


def test_a_failed_commit_drops_the_answer_of_a_pipelined_read(
    node: tuple[Harness, Upstream],
) -> None:
    harness, upstream = node
    agent = harness.agent()  # its token's issue is audited: before the writer is held
    held = HeldWriter(harness, fail=True)
    with ThreadPoolExecutor(1) as pool:
        answer = send(pool, harness, agent, "GET", "/t/reads/v1/secret-report")
        wait_for(lambda: len(upstream.seen) == 1)
        held.release()
        response = answer.result(30)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "audit" in response.json()["detail"]
    assert "/v1/secret-report" not in response.text  # the target's body never delivered
    assert harness.events("decision") == []  # the trail holds no event: nothing committed


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("GET", "/t/plain/v1/items/7", {}),  # the target did not opt in
        ("POST", "/t/reads/v1/items", {"content": b"{}"}),  # not a read
        ("GET", "/t/reads/v1/items/7", {"content": b"abc"}),  # a GET with a body
        ("GET", "/t/reads/v1/items/7", {"headers": {"X-HTTP-Method-Override": "POST"}}),
        ("GET", "/t/reads/v1/items/7", {"headers": {"x_method_override": "POST"}}),
    ],
)
def test_everything_else_is_sent_only_after_its_event_committed(
    node: tuple[Harness, Upstream], method: str, path: str, extra: dict[str, Any]
) -> None:
    harness, upstream = node
    agent = harness.agent()  # its token's issue is audited: before the writer is held
    held = HeldWriter(harness)
    with ThreadPoolExecutor(1) as pool:
        answer = send(pool, harness, agent, method, path, **extra)
        time.sleep(0.5)
        assert upstream.seen == []  # held with the commit
        held.release()
        response = answer.result(30)
    assert response.status_code == 200
    assert len(upstream.seen) == 1
    (decision,) = harness.events("decision")
    assert decision.decision == "allow"


def test_a_denied_read_is_never_sent(node: tuple[Harness, Upstream]) -> None:
    harness, upstream = node
    agent = harness.agent()
    with ThreadPoolExecutor(1) as pool:
        answer = send(pool, harness, agent, "GET", "/t/reads/admin")
        response = answer.result(30)
    assert response.status_code == 403 and upstream.seen == []


_SPEC_ON = HttpTargetSpec(base_url="http://127.0.0.1:9", pipeline_reads=True)
_SPEC_OFF = HttpTargetSpec(base_url="http://127.0.0.1:9")
_NAMES = st.sampled_from(
    ["accept", "content-length", "transfer-encoding", "upgrade", "expect", "x-http-method",
     "x-http-method-override", "x-method-override", " X_HTTP_Method ", "x-other",
     "x-original-url", "X_Rewrite_URL"]
)  # fmt: skip
_QUERIES = st.sampled_from(
    ["", "a=1", "_method=DELETE", "%5Fmethod=DELETE", "a=1&_Method=put", "x=method"]
)


@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "get", "OPTIONS", "PATCH"]),
    headers=st.dictionaries(_NAMES | st.text(max_size=8), st.text(max_size=6), max_size=5),
    query=_QUERIES | st.text(max_size=12),
)
def test_only_plain_reads_are_ever_pipelined(
    method: str, headers: dict[str, str], query: str
) -> None:
    assert not _pipelined(_SPEC_OFF, method, headers, query)
    if not _pipelined(_SPEC_ON, method, headers, query):
        return
    assert method in ("GET", "HEAD")
    assert "_method" not in unquote_plus(query).lower(), query
    for name, value in headers.items():
        normalized = name.strip(" \t").replace("_", "-").lower()
        assert normalized not in (
            "transfer-encoding", "upgrade", "expect",
            "x-http-method", "x-http-method-override", "x-method-override",
            "x-original-url", "x-rewrite-url",
        )  # fmt: skip
        if normalized == "content-length":
            assert value.strip(" \t") == "0"
