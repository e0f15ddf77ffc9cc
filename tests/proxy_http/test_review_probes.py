"""Adversarial requests on the wire (raw sockets) and misbehaving targets (raw upstreams):
request framing towards the target, the upstream keep-alive pool, retries, method case."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from .conftest import Agent, Harness, agent_head
from .rawupstream import RawSeen, RawUpstream, ok
from .upstream import Upstream

POLICY = """
rules:
  - id: anything
    effect: allow
    agents: [bot]
    http: {methods: ["*"], paths: ["/v1/**", "/upload", "/slow", "/act", "/head", "/next"]}
  - id: no-delete
    effect: deny
    agents: ["*"]
    http: {methods: [DELETE], paths: ["/v1/items/*"]}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path, POLICY)
    yield made
    made.stop()


def _head(node: Harness, agent: Agent, method: str, path: str, *extra: str) -> bytes:
    return agent_head(node, agent, method, path, *extra) + b"\r\n\r\n"


def _send(port: int, *parts: bytes, pause: float = 0.2) -> bytes:
    """Send ``parts`` with a pause between them, then read until the node closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for i, part in enumerate(parts):
            if i:
                time.sleep(pause)
            sock.sendall(part)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- request framing towards the target ---------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        # An ordinary upload whose body arrives in two pieces.
        ("Content-Length: 10",),
        # Both framings from the agent (h11 reads it chunked).
        ("Content-Length: 10", "Transfer-Encoding: chunked"),
    ],
    ids=["content-length", "content-length-and-chunked"],
)
def test_the_target_never_gets_both_content_length_and_chunked(
    node: Harness, upstream: Upstream, framing: tuple[str, ...]
) -> None:
    """RFC 9112 section 6.1: a message forwarded chunked must not keep a Content-Length; a
    target (or a proxy in front of it) that frames by Content-Length would read the rest of
    the body as a new request that no policy decided (request smuggling)."""
    node.add_target("api", base_url=upstream.url)
    agent = node.agent()
    head = _head(node, agent, "POST", "/upload", *framing, "Connection: close")
    if "Transfer-Encoding: chunked" in framing:
        parts = (head + b"5\r\nabcde\r\n", b"5\r\nfghij\r\n0\r\n\r\n")
    else:
        parts = (head + b"abcde", b"fghij")
    answer = _send(node.port, *parts)
    assert _status(answer) in (200, 400, 502), answer
    for seen in upstream.seen:
        both = seen.header("content-length") and seen.header("transfer-encoding")
        assert not both, seen.headers


def test_a_request_with_both_framings_closes_its_connection(
    node: Harness, upstream: Upstream
) -> None:
    """RFC 9112 section 6.3: a request with Transfer-Encoding and Content-Length is read
    chunked and the connection MUST be closed after the response. Kept open, the bytes a
    Content-Length-framing proxy in front of the node sent as body are read as a request."""
    node.add_target("api", base_url=upstream.url)
    agent = node.agent()
    one = _head(node, agent, "POST", "/upload", "Content-Length: 4", "Transfer-Encoding: chunked")
    two = _head(node, agent, "GET", "/v1/second", "Connection: close")
    answer = _send(node.port, one + b"3\r\nabc\r\n0\r\n\r\n" + two)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"connection: close" in answer.lower()
    assert [s.target for s in upstream.seen] == ["/upload"]


# --- the upstream keep-alive pool ---------------------------------------------------------

POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison"


@pytest.mark.parametrize("later", [False, True], ids=["same-packet", "while-idle"])
def test_bytes_after_a_response_never_answer_the_next_request(node: Harness, later: bool) -> None:
    """A target answering HEAD with a body (or sending more than its framing says) leaves
    bytes on the pooled connection; they must not be read as the answer to the next request
    on it (which may be another agent's, or another target's on the same origin)."""

    def answer(seen: RawSeen) -> bytes | list[bytes]:
        if seen.target == "/head":  # a HEAD answered with a body that looks like a response
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(POISON)
            return [head, POISON] if later else head + POISON
        return ok(b"genuine")

    target = RawUpstream(answer).start()
    try:
        node.add_target("api", base_url=target.url)
        agent = node.agent()
        first = _send(node.port, _head(node, agent, "HEAD", "/head", "Connection: close"))
        assert _status(first) == 200
        time.sleep(0.2)
        second = _send(node.port, _head(node, agent, "GET", "/next", "Connection: close"))
        assert second.endswith(b"genuine"), second
    finally:
        target.stop()


def test_a_chunked_response_with_a_content_length_reaches_the_agent_whole(node: Harness) -> None:
    """RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length. The broker reads
    such a body chunked; passing the target's Content-Length on made the agent's side of
    the broker refuse the body (a response cut off after its head)."""

    def answer(seen: RawSeen) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"b\r\nhello world\r\n0\r\n\r\n"
        )

    target = RawUpstream(answer).start()
    try:
        node.add_target("api", base_url=target.url)
        agent = node.agent()
        answer_ = _send(node.port, _head(node, agent, "GET", "/v1/both", "Connection: close"))
        assert _status(answer_) == 200
        head, _, body = answer_.partition(b"\r\n\r\n")
        assert b"content-length: 3" not in head.lower(), head
        assert b"hello world" in body, answer_
    finally:
        target.stop()


# --- retries ------------------------------------------------------------------------------


def test_a_request_the_target_did_not_answer_in_time_is_not_sent_again(
    tmp_path: Path, upstream: Upstream
) -> None:
    """A read timeout is not a stale keep-alive connection: the target has the request and
    may be acting on it; it must not be sent a second time."""
    node = Harness(tmp_path, POLICY)
    try:
        node.add_target("api", base_url=upstream.url, read_timeout=0.5)
        agent = node.agent()
        assert (
            _status(_send(node.port, _head(node, agent, "GET", "/v1/a", "Connection: close")))
            == 200
        )
        answer = _send(node.port, _head(node, agent, "POST", "/slow?s=1.5", "Connection: close"))
        assert _status(answer) == 504
        time.sleep(2)
        assert [s.target for s in upstream.seen].count("/slow?s=1.5") == 1
    finally:
        node.stop()


def test_a_non_idempotent_request_is_never_retried(node: Harness) -> None:
    """RFC 9110 section 9.2.2: a POST the target received and then dropped the connection
    on may have had its effect; the broker must not send it again on a new connection."""

    def answer(seen: RawSeen) -> bytes | None:
        if seen.target == "/act":
            return None  # acted, then the connection dropped before any answer
        return ok()

    target = RawUpstream(answer).start()
    try:
        node.add_target("api", base_url=target.url)
        agent = node.agent()
        assert (
            _status(_send(node.port, _head(node, agent, "GET", "/v1/a", "Connection: close")))
            == 200
        )
        answer_ = _send(node.port, _head(node, agent, "POST", "/act", "Connection: close"))
        assert _status(answer_) == 502
        assert [s.target for s in target.seen].count("/act") == 1
    finally:
        target.stop()


# --- methods --------------------------------------------------------------------------------


def test_a_lower_case_method_does_not_escape_a_deny_rule(node: Harness, upstream: Upstream) -> None:
    """Django, Werkzeug and others upper-case the request method, as they do the override
    headers (which the policy folds for exactly that reason): ``delete`` is DELETE to them.
    The policy compares methods case-sensitively (spec 5.1), so the broker refuses to
    forward a method not written in upper case (501)."""
    node.add_target("api", base_url=upstream.url)
    agent = node.agent()
    assert (
        _status(_send(node.port, _head(node, agent, "DELETE", "/v1/items/1", "Connection: close")))
        == 403
    )
    for method in ("delete", "Delete", "get"):
        answer = _send(node.port, _head(node, agent, method, "/v1/items/1", "Connection: close"))
        assert _status(answer) == 501, answer
    assert upstream.seen == []


# --- what the agent says, under names the target folds together ---------------------------


def test_underscore_spellings_of_dropped_headers_are_dropped(
    node: Harness, upstream: Upstream
) -> None:
    """CGI, WSGI (``HTTP_X_FORWARDED_FOR``), PHP and some proxies fold ``_`` and ``-`` in
    header names, as the policy already assumes for override headers: ``X_Forwarded_For``
    is ``X-Forwarded-For`` to them, and ``X_Api_Key`` shadows the injected ``X-Api-Key``."""
    node.put_secret("key", b"the-real-key")
    node.add_target(
        "api",
        base_url=upstream.url,
        credential={"type": "header", "secret": "key", "header_name": "X-Api-Key"},
    )
    agent = node.agent()
    extra = ("X_Forwarded_For: 10.9.9.9", "X_Real_IP: 10.9.9.9", "X_Api_Key: agent-chosen")
    answer = _send(node.port, _head(node, agent, "GET", "/v1/a", *extra, "Connection: close"))
    assert _status(answer) == 200
    names = [name for name, _ in upstream.seen[-1].headers]
    assert upstream.seen[-1].header("x-api-key") == ["the-real-key"]
    assert not {"x_forwarded_for", "x_real_ip", "x_api_key"} & set(names), names


def test_an_encoded_spelling_of_the_credential_parameter_is_dropped(
    node: Harness, upstream: Upstream
) -> None:
    """Targets decode parameter names (``api%5Fkey`` is ``api_key``) and many take the first
    occurrence: the agent's value would shadow the injected one."""
    node.put_secret("key", b"the-real-key")
    node.add_target(
        "api",
        base_url=upstream.url,
        credential={"type": "query", "secret": "key", "param": "api_key"},
    )
    agent = node.agent()
    answer = _send(
        node.port,
        _head(node, agent, "GET", "/v1/a?api%5Fkey=agent-chosen&x=1", "Connection: close"),
    )
    assert _status(answer) == 200
    assert upstream.seen[-1].target == "/v1/a?x=1&api_key=the-real-key"


# --- the credential echoed back -------------------------------------------------------------


@pytest.mark.parametrize(
    "echo",
    [
        lambda key: quote(key, safe=""),
        lambda key: quote(key, safe="").lower(),
        lambda key: quote_plus(key, safe=""),
    ],
    ids=["percent-encoded", "lower-case-hex", "form-encoded"],
)
def test_a_redirect_echoing_the_credential_url_encoded_never_reaches_the_agent(
    node: Harness, echo: Callable[[str], str]
) -> None:
    """A target that puts the injected header credential in a redirect's query (as many
    login redirects do) percent-encodes it; base64 keys hold '/', '+' and '='."""
    key = "k3y/with+plus and=="
    node.put_secret("key", key.encode())
    location = f"/login?api_key={echo(key)}".encode()

    def answer(seen: RawSeen) -> bytes:
        return b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"

    target = RawUpstream(answer).start()
    try:
        node.add_target(
            "api",
            base_url=target.url,
            credential={"type": "header", "secret": "key", "header_name": "X-Api-Key"},
        )
        agent = node.agent()
        answer_ = _send(node.port, _head(node, agent, "GET", "/v1/a", "Connection: close"))
        assert _status(answer_) == 302
        assert target.seen[-1].header("x-api-key") == [key]
        assert location not in answer_, answer_
    finally:
        target.stop()


def _echo(seen: RawSeen) -> bytes:
    """A target that answers TRACE as RFC 9110 9.3.8 says: the request it received."""
    if seen.method.upper() != "TRACE":
        return ok()
    echo = f"{seen.method} {seen.target} HTTP/1.1\r\n".encode()
    echo += "".join(f"{n}: {v}\r\n" for n, v in seen.headers).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: %d\r\n\r\n"
    return head % len(echo) + echo


@pytest.mark.parametrize("method", ["TRACE", "trace"])
@pytest.mark.parametrize(
    "credential",
    [
        {"type": "header", "secret": "key", "header_name": "X-Api-Key"},
        {"type": "query", "secret": "key", "param": "api_key"},
    ],
    ids=["header", "query"],
)
def test_trace_never_carries_the_credential(
    node: Harness, method: str, credential: dict[str, str]
) -> None:
    """RFC 9110 section 9.3.8: a client MUST NOT send stored credentials in a TRACE request,
    whose answer echoes it: an allow rule on any method (``*``) handed the agent the key."""
    node.put_secret("key", b"the-real-key")
    target = RawUpstream(_echo).start()
    try:
        node.add_target("api", base_url=target.url, credential=credential)
        agent = node.agent()
        answer = _send(node.port, _head(node, agent, method, "/v1/a", "Connection: close"))
        assert b"the-real-key" not in answer, answer
        assert all(b"the-real-key" not in repr(s).encode() for s in target.seen)
    finally:
        target.stop()


def test_connect_is_not_forwarded(node: Harness, upstream: Upstream) -> None:
    """CONNECT takes an authority, never a path (RFC 9110 section 9.3.6); forwarded as
    ``CONNECT /v1/a`` a 2xx switches the upstream connection to a tunnel the broker never
    relays (the agent got an empty 200 and the node an assertion error)."""
    node.add_target("api", base_url=upstream.url)
    agent = node.agent()
    answer = _send(node.port, _head(node, agent, "CONNECT", "/v1/a", "Connection: close"))
    assert _status(answer) == 501, answer
    assert upstream.seen == []
