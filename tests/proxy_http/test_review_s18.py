"""Probes of a red-team review of the HTTP broker, end to end with real clients on raw
sockets: each one failed before its fix (a WebDAV Destination, PHP spellings of the method
override, a refused upgrade's coded body, a malformed answer head quoted into the 502, an
escaped credential in a response header, client-address headers, size refusals unaudited).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import Agent, Harness, agent_head
from .rawupstream import RawSeen, RawUpstream, ok
from .test_review_probes import _send, _status
from .upstream import Upstream

Answer = Callable[[RawSeen], bytes]

SECRET = "the-real-key-0123456789"

POLICY = """
rules:
  - id: anything
    effect: allow
    agents: [bot]
    http: {methods: ["*"], paths: ["/v1/**"]}
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
    return agent_head(node, agent, method, path, *extra, "Connection: close") + b"\r\n\r\n"


@contextmanager
def credentialed(node: Harness, answer: Answer, secret: str) -> Iterator[RawUpstream]:
    """Target ``api``: a raw upstream answering with ``answer``, ``secret`` injected as
    its ``X-Api-Key``."""
    node.put_secret("key", secret.encode())
    target = RawUpstream(answer).start()
    try:
        node.add_target("api", base_url=target.url,
                        credential={"type": "header", "secret": "key",
                                    "header_name": "X-Api-Key"})  # fmt: skip
        yield target
    finally:
        target.stop()


# --- 1. the target's malformed response head is quoted into the 502 ------------------------


def _redirect_with_key(seen: RawSeen) -> bytes:
    """A login redirect that carries the request's API key (the case headers.py guards
    against) and the agent's ``next`` parameter, decoded, as a naive server writes it."""
    query = parse_qs(urlsplit(seen.target).query)
    nxt = query.get("next", ["/"])[0].encode("latin-1")
    key = seen.header("x-api-key")[0].encode()
    return (
        b"HTTP/1.1 302 Found\r\nLocation: /login?next="
        + nxt
        + b"&api_key="
        + key
        + b"\r\nContent-Length: 0\r\n\r\n"
    )


def test_a_malformed_response_head_does_not_carry_the_credential_to_the_agent(
    node: Harness,
) -> None:
    """The agent sends next=%0c: the target's Location line then holds a form feed, which
    h11 refuses as 'illegal header line: <the whole line>'; that text went into the 502's
    detail and the exchange event, credential included. Only its fixed part does now."""
    with credentialed(node, _redirect_with_key, SECRET):
        agent = node.agent()
        # The ordinary redirect: the header holding the key is dropped.
        plain = _send(node.port, _head(node, agent, "GET", "/v1/a?next=/home"))
        assert _status(plain) == 302 and SECRET.encode() not in plain, plain
        # One control character from the agent: the same line reaches the agent in a 502.
        answer = _send(node.port, _head(node, agent, "GET", "/v1/a?next=%0c"))
        assert SECRET.encode() not in answer, answer
        for event in node.exchanges(2, target="api"):
            assert SECRET not in json.dumps(event.detail), event.detail


# --- 2. PHP's parameter-name mangling hides a _method override from the policy --------------


@pytest.mark.parametrize("name", [".method", "%2Emethod", " .method", "%20.method"])
def test_a_php_spelling_of_the_method_parameter_is_an_override_too(
    node: Harness, upstream: Upstream, name: str
) -> None:
    """PHP registers query parameters with ' ' and '.' in their names as '_' (leading blanks
    dropped): ``.method=DELETE`` is ``$_GET['_method']``, which Symfony (Laravel) obeys for
    a POST. Such a POST went to the target as an allowed POST past a deny of DELETE."""
    node.add_target("api", base_url=upstream.url)
    agent = node.agent()
    refused = _send(node.port, _head(node, agent, "POST", "/v1/items/1?_method=DELETE"))
    assert _status(refused) == 403, refused
    query = name.replace(" ", "+") + "=DELETE"
    answer = _send(node.port, _head(node, agent, "POST", f"/v1/items/1?{query}"))
    assert _status(answer) == 403, answer
    assert upstream.seen == []


# --- 3. a refused WebSocket upgrade relays a gzip body undecoded, so unmasked -------------


def _gzip_echo(seen: RawSeen) -> bytes:
    """A target that refuses the upgrade with an error page quoting the request's headers,
    gzip-coded whatever was asked (as the broker's own docs say S3 and others do)."""
    page = "".join(f"{n}: {v}\n" for n, v in seen.headers).encode()
    body = gzip.compress(b"cannot upgrade this request:\n" + page)
    return (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


def test_a_refused_upgrade_never_shows_the_credential_in_a_coded_body(node: Harness) -> None:
    with credentialed(node, _gzip_echo, SECRET) as target:
        agent = node.agent()
        # An ordinary GET: the same coded body is decoded, masked, sent uncoded.
        plain = _send(node.port, _head(node, agent, "GET", "/v1/page"))
        assert _status(plain) == 400 and b"********" in plain, plain
        # The same through a WebSocket upgrade: relayed as it came.
        head = agent_head(
            node,
            agent,
            "GET",
            "/v1/ws",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        )
        answer = _send(node.port, head + b"\r\n\r\n")
        assert _status(answer) == 400, answer
        assert target.seen[-1].header("x-api-key") == [SECRET]
        head_, _, body = answer.partition(b"\r\n\r\n")
        if b"content-encoding: gzip" in head_.lower():
            if b"transfer-encoding: chunked" in head_.lower():
                body = _dechunk(body)
            body = gzip.decompress(body)
        assert SECRET.encode() not in body, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


# --- 4. a response header showing the credential JSON-escaped reaches the agent -----------

SLASHED = "k3y/with/slashes+0123456789=="


def _json_header(seen: RawSeen) -> bytes:
    """A target (PHP's json_encode escapes '/') that returns its request context as JSON in
    a debug header, and the same JSON in its body."""
    context = json.dumps({"api_key": seen.header("x-api-key")[0]}).replace("/", "\\/")
    return ok(context.encode(), b"X-Debug-Context: " + context.encode())


def test_a_response_header_never_shows_the_credential_escaped(node: Harness) -> None:
    """The body was masked in every form an echo may show (JSON-escaped with '\\/' too),
    response headers only as is and percent-decoded: the same JSON in a header reached
    the agent. Headers are checked for every form now."""
    with credentialed(node, _json_header, SLASHED):
        agent = node.agent()
        answer = _send(node.port, _head(node, agent, "GET", "/v1/a"))
        head, _, body = answer.partition(b"\r\n\r\n")
        escaped = SLASHED.replace("/", "\\/").encode()
        assert escaped not in body, body  # the body: masked
        assert escaped not in head, head  # the header: passed as is


# --- 5. headers telling the target where the request came from ------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Client-IP: 10.0.0.1",
        "True-Client-IP: 10.0.0.1",
        "X-Client-IP: 10.0.0.1",
        "X-Cluster-Client-IP: 10.0.0.1",
        "CF-Connecting-IP: 10.0.0.1",
        "X.Forwarded.For: 10.0.0.1",
    ],
)
def test_no_client_address_header_of_the_agent_reaches_the_target(
    node: Harness, upstream: Upstream, header: str
) -> None:
    """Forwarded, X-Forwarded-* and X-Real-IP were dropped ("a target must not trust what
    the agent says about where the request came from"), not the other spellings of the
    same claim (Rails' remote_ip reads Client-IP, CDNs' True-Client-IP, CF-Connecting-IP;
    PHP reads X.Forwarded.For as X-Forwarded-For)."""
    node.add_target("api", base_url=upstream.url)
    agent = node.agent()
    answer = _send(node.port, _head(node, agent, "GET", "/v1/a", header))
    assert _status(answer) == 200, answer
    name = header.partition(":")[0].lower()
    assert upstream.seen[-1].header(name) == [], upstream.seen[-1].headers


# --- 6. a refusal for size leaves no audit event -------------------------------------------


@pytest.mark.parametrize("kind", ["414", "431"])
def test_a_request_refused_for_its_size_is_audited(
    node: Harness, upstream: Upstream, kind: str
) -> None:
    """DESIGN invariant 5: every action, allowed or not, produces an audit event. A request
    refused 414 (target too long) or 431 (too many headers), checked before authentication,
    left nothing in the trail."""
    node.add_target("api", base_url=upstream.url)
    agent = node.agent()
    before = len(node.events())
    if kind == "414":
        answer = _send(node.port, _head(node, agent, "GET", "/v1/a?q=" + "x" * 9000))
    else:
        extra = [f"X-Pad-{i}: {i}" for i in range(120)]
        answer = _send(node.port, _head(node, agent, "GET", "/v1/a", *extra))
    assert _status(answer) == int(kind), answer
    assert upstream.seen == []
    time.sleep(0.3)
    request_id = [
        line.split(b":", 1)[1].strip().decode()
        for line in answer.split(b"\r\n")
        if line.lower().startswith(b"x-request-id")
    ]
    events = node.events()
    assert len(events) > before, "no audit event for a refused request"
    assert any(request_id[0] in json.dumps(e.detail) for e in events), events[before:]


# --- 7. WebDAV COPY / MOVE: the Destination header names a path the policy never saw --------

DAV_POLICY = """
rules:
  - id: public-files
    effect: allow
    agents: [bot]
    http: {methods: ["*"], paths: ["/files/public/**"]}
  - id: private-files
    effect: deny
    agents: ["*"]
    http: {methods: ["*"], paths: ["/files/private/**"]}
"""


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
@pytest.mark.parametrize(
    "destination", ["/files/private/config.txt", "http://files.example/files/private/config.txt"]
)
def test_webdav_destination_is_decided_too(
    tmp_path: Path, upstream: Upstream, method: str, destination: str
) -> None:
    """The agent may do anything under /files/public and nothing under /files/private. A
    MOVE (or COPY) of a public file with ``Destination`` naming a private one writes the
    private file on a WebDAV server (nginx's dav module did): the Destination's path is
    decided too, as X-Original-URL's is, and the request is refused before it leaves."""
    (tmp_path / "node").mkdir()
    node = Harness(tmp_path / "node", DAV_POLICY)
    try:
        node.add_target("api", base_url=upstream.url)
        agent = node.agent()
        answer = _send(
            node.port,
            _head(
                node,
                agent,
                method,
                "/files/public/x.txt",
                f"Destination: {destination}",
                "Overwrite: T",
            ),
        )
        assert _status(answer) == 403, answer
        assert upstream.seen == []
        within = _send(
            node.port,
            _head(node, agent, method, "/files/public/x.txt", "Destination: /files/public/y.txt"),
        )
        assert _status(within) == 200, within
        assert upstream.seen[-1].header("destination") == ["/files/public/y.txt"]
    finally:
        node.stop()


@pytest.mark.parametrize(
    "header", ["X-HTTP-Method.Override: DELETE", "x_http_method_override: DELETE"]
)
def test_a_dotted_override_header_is_an_override_too(
    node: Harness, upstream: Upstream, header: str
) -> None:
    """PHP's server reads ``X-HTTP-Method.Override`` as HTTP_X_HTTP_METHOD_OVERRIDE."""
    node.add_target("api", base_url=upstream.url)
    agent = node.agent()
    answer = _send(
        node.port, _head(node, agent, "POST", "/v1/items/1", header, "Content-Length: 0")
    )
    assert _status(answer) == 403, answer
    assert upstream.seen == []
