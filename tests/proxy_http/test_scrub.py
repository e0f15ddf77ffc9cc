"""The injected credential masked in response bodies, end to end: a real node, real
upstreams on loopback, httpx and curl as the agent. The streaming scrubber itself is
property-tested in test_scrub_properties.py."""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import resource
import threading
import time
import zlib
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from .conftest import Harness, curl, curl_status
from .rawupstream import RawSeen, RawUpstream, ok
from .upstream import Upstream

STREAM_BYTES = int(os.environ.get("TETHER_TEST_STREAM_BYTES", str(1 << 30)))
LARGE = 32 << 20
SECRET = 'p@ss word&="\\/é-0123'  # every escaping an echo may apply changes it


def _get(harness: Harness, path: str, **headers: str) -> httpx.Response:
    agent = harness.agent()
    url = f"{harness.url}/t/api{path}"
    return httpx.get(url, headers={**agent.headers("GET", url), **headers}, timeout=60)


def _keyed(harness: Harness, base_url: str) -> None:
    """Target ``api`` at ``base_url``, the key ``the-real-key`` injected as ``X-Api-Key``."""
    harness.put_secret("key", b"the-real-key")
    harness.add_target("api", base_url=base_url, credential={
        "type": "header", "secret": "key", "header_name": "X-Api-Key"})  # fmt: skip


def _forms(credential: dict[str, str]) -> list[str]:
    """What an echo of the injected credential may show."""
    shown = [SECRET, quote(SECRET, safe=""), json.dumps(SECRET)[1:-1]]
    if credential["type"] == "basic":
        shown.append(base64.b64encode(f"svc:{SECRET}".encode()).decode())
    return shown


@pytest.mark.parametrize(
    "credential",
    [
        {"type": "header", "secret": "key", "header_name": "X-Api-Key"},
        {"type": "bearer", "secret": "key"},
        {"type": "basic", "username": "svc", "secret": "key"},
        {"type": "query", "secret": "key", "param": "api_key"},
    ],
    ids=["header", "bearer", "basic", "query"],
)
def test_an_echo_of_each_credential_kind_is_masked(
    harness: Harness, upstream: Upstream, credential: dict[str, str]
) -> None:
    value = SECRET if credential["type"] in ("basic", "query") else "k3y/with+plus and=="
    harness.put_secret("key", value.encode())
    harness.add_target("api", base_url=upstream.url, credential=credential)
    answer = _get(harness, "/v1/echo?a=1")
    assert answer.status_code == 200, answer.text
    echo = answer.json()  # still JSON: masks are as long as what they replace
    seen = upstream.seen[-1]
    forms = _forms(credential) if value == SECRET else [value, quote(value, safe="")]
    for form in forms:
        assert form not in answer.text, form
    assert len(answer.content) == int(answer.headers["content-length"])
    escaped = len(json.dumps(SECRET, ensure_ascii=False)[1:-1].encode())  # as the echo wrote it
    if credential["type"] == "query":
        assert echo["args"]["api_key"] == "*" * escaped
        assert seen.target.endswith("api_key=" + quote(SECRET, safe=""))
        assert echo["target"] == "/v1/echo?a=1&api_key=" + "*" * len(quote(SECRET, safe=""))
    elif credential["type"] == "basic":
        assert echo["basic"] == "svc:" + "*" * escaped  # the password alone
        assert echo["headers"]["authorization"] == "Basic " + "*" * len(forms[-1])
    else:
        shown = echo["headers"]["authorization" if credential["type"] == "bearer" else "x-api-key"]
        assert shown.endswith("*" * len(value)) and value not in shown
    event = harness.exchanges(1, target="api")[0]
    assert event.detail["credential_masked"] >= 1
    assert value not in repr(harness.events())


def test_an_oauth_token_echoed_is_masked(harness: Harness, upstream: Upstream) -> None:
    harness.put_secret("oauth-secret", b"client-secret-1")
    harness.add_target("api", base_url=upstream.url, credential={
        "type": "oauth2_client_credentials", "token_url": upstream.url + "/oauth/token",
        "client_id": "client-1", "secret": "oauth-secret",
    })  # fmt: skip
    answer = _get(harness, "/v1/echo")
    assert answer.status_code == 200
    token = upstream.issued[-1]
    assert upstream.seen[-1].header("authorization") == [f"Bearer {token}"]
    assert token not in answer.text
    assert answer.json()["headers"]["authorization"] == "Bearer " + "*" * len(token)


def test_curl_gets_the_query_credential_masked_in_an_error_page(harness: Harness) -> None:
    """An error page quoting the URL, with the query credential in it, to curl."""

    def answer(seen: RawSeen) -> bytes:
        page = f"<html><p>No such page: {seen.target}</p></html>".encode()
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page)

    target = RawUpstream(answer).start()
    try:
        harness.put_secret("key", b"the-real-key/with space")
        harness.add_target("api", base_url=target.url, credential={
            "type": "query", "secret": "key", "param": "api_key"})  # fmt: skip
        agent = harness.agent()
        url = f"{harness.url}/t/api/v1/missing"
        auth = agent.headers("GET", url)
        status, body = curl_status(curl(url, "-H", f"Authorization: {auth['Authorization']}",
                                        "-H", f"DPoP: {auth['DPoP']}"))  # fmt: skip
        assert target.seen[-1].target == "/v1/missing?api_key=the-real-key%2Fwith%20space"
        assert status == 404
        assert body == b"<html><p>No such page: /v1/missing?api_key=" + b"*" * 27 + b"</p></html>"
    finally:
        target.stop()


def test_a_secret_split_across_two_chunks_is_masked(harness: Harness) -> None:
    """A chunked answer whose first chunk ends in the middle of the secret, the second
    written 0.1 s later: the end of the first is held until the second comes."""
    secret = b"the-real-key-0123456789"

    def answer(seen: RawSeen) -> list[bytes]:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        one, two = b'{"echo": "' + secret[:9], secret[9:] + b'"}\n'
        return [
            head + b"%x\r\n%s\r\n" % (len(one), one),
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(two), two),
        ]

    target = RawUpstream(answer).start()
    try:
        harness.put_secret("key", secret)
        harness.add_target("api", base_url=target.url, credential={
            "type": "header", "secret": "key", "header_name": "X-Api-Key"})  # fmt: skip
        agent = harness.agent()
        url = f"{harness.url}/t/api/v1/split"
        pieces = []
        with httpx.stream("GET", url, headers=agent.headers("GET", url), timeout=30) as response:
            assert response.status_code == 200
            pieces = list(response.iter_raw())
        assert b"".join(pieces) == b'{"echo": "' + b"*" * len(secret) + b'"}\n'
        assert target.seen[-1].header("x-api-key") == [secret.decode()]
        auth = agent.headers("GET", url)
        status, body = curl_status(curl(url, "-H", f"Authorization: {auth['Authorization']}",
                                        "-H", f"DPoP: {auth['DPoP']}"))  # fmt: skip
        assert (status, body) == (200, b'{"echo": "' + b"*" * len(secret) + b'"}\n')
    finally:
        target.stop()


def test_a_large_echo_streams_masked_in_constant_memory(
    harness: Harness, upstream: Upstream
) -> None:
    """``TETHER_TEST_STREAM_BYTES`` of filler and the key, the key in many chunk splits."""
    secret = b"k3y-that-the-agent-never-sees"
    harness.put_secret("key", secret)
    harness.add_target("api", base_url=upstream.url, credential={
        "type": "header", "secret": "key", "header_name": "X-Api-Key"})  # fmt: skip
    agent = harness.agent()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    url = f"{harness.url}/t/api/v1/echo-big"
    unit = b"-" * 1000 + b"[" + b"*" * len(secret) + b"]"
    marker = b"[" + b"*" * len(secret) + b"]"
    received, masks, tail = 0, 0, b""
    with httpx.stream("GET", url + f"?n={STREAM_BYTES}", headers=agent.headers("GET", url),
                      timeout=600) as response:  # fmt: skip
        assert response.status_code == 200
        for chunk in response.iter_raw(1 << 20):
            window = tail + chunk  # an occurrence ending in this chunk is whole in it
            assert secret not in window
            masks += window.count(marker)
            tail = window[-(len(marker) - 1) :]
            received += len(chunk)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert received == STREAM_BYTES
    assert masks == STREAM_BYTES // len(unit)  # every whole one
    assert grown < 64, f"peak RSS grew by {grown:.0f} MiB"
    event = harness.exchanges(1, target="api")[0]
    assert event.bytes_out == STREAM_BYTES and event.detail["credential_masked"] >= masks


@functools.cache
def _bomb_member() -> bytes:
    return gzip.compress(bytes(64 << 20), compresslevel=9)


@pytest.fixture
def coded_target() -> Iterator[RawUpstream]:
    """A target that codes its answers whatever it was asked (S3 serves objects stored
    gzip-coded so), each echoing the ``X-Api-Key`` it got; the path picks the coding."""

    def answer(seen: RawSeen) -> bytes | list[bytes]:
        key = (seen.header("x-api-key") or ["none"])[0].encode()
        body = b'{"key": "%s", "pad": "%s"}' % (key, b"x" * 300)
        kind = seen.target.rsplit("/", 1)[-1]
        if kind == "deflate":
            return ok(zlib.compress(body), b"Content-Encoding: deflate")
        if kind == "br":  # not decoded: its bytes are whatever they are
            return ok(body, b"Content-Encoding: br")
        if kind == "twice":
            return ok(gzip.compress(gzip.compress(body)), b"Content-Encoding: gzip, gzip")
        if kind == "truncated":
            coded = gzip.compress(body)[:-12]
            return ok(coded, b"Content-Encoding: gzip")
        if kind == "large":  # 32 MiB decoded from ~32 KiB, the key at both ends
            large = key + bytes(LARGE) + key
            return ok(gzip.compress(large, compresslevel=9), b"Content-Encoding: gzip")
        if kind == "bomb":  # 2 GiB of zeros in ~2 MiB: one 64 MiB member, 32 times
            return ok(_bomb_member() * 32, b"Content-Encoding: gzip")
        if kind == "members":  # two gzip members, the key cut between them, sent in pieces
            cut = body.index(key) + 4
            coded = gzip.compress(body[:cut]) + gzip.compress(body[cut:])
            return [ok(coded, b"Content-Encoding: gzip")[:-20], coded[-20:]]
        return ok(gzip.compress(body), b"Content-Encoding: gzip", b'ETag: "v1"',
                  b"Content-Type: application/json", b"Content-MD5: abc")  # fmt: skip

    target = RawUpstream(answer).start()
    yield target
    target.stop()


def test_a_coded_answer_is_decoded_and_masked_when_a_credential_is_injected(
    harness: Harness, coded_target: RawUpstream
) -> None:
    _keyed(harness, coded_target.url)
    harness.add_target("open", base_url=coded_target.url)
    masked = b'{"key": "************", "pad": "%s"}' % (b"x" * 300)
    answer = _get(harness, "/v1/gzip", **{"Accept-Encoding": "gzip, br", "Accept_Encoding": "br"})
    assert answer.status_code == 200, answer.text
    assert answer.content == masked  # httpx decodes nothing: none is announced
    assert "content-encoding" not in answer.headers and "content-md5" not in answer.headers
    assert answer.headers["etag"] == 'W/"v1"' and "content-length" not in answer.headers
    assert answer.headers["content-type"] == "application/json"
    assert coded_target.seen[-1].header("accept-encoding") == ["identity"]
    assert "accept_encoding" not in dict(coded_target.seen[-1].headers)
    event = harness.exchanges(1, target="api")[0]
    assert event.detail["decoded"] == "gzip" and event.detail["credential_masked"] == 1
    assert event.bytes_out == len(masked) and event.action["status"] == 200
    # curl, as the agent: what it receives is the decoded, masked body.
    agent = harness.agent()
    for kind in ("deflate", "members"):
        url = f"{harness.url}/t/api/v1/{kind}"
        auth = [f"-H{k}: {v}" for k, v in agent.headers("GET", url).items()]
        status, body = curl_status(curl(*auth, url))
        assert (status, body) == (200, masked), kind
    assert [e.detail["decoded"] for e in harness.exchanges(3, target="api")[1:]] == [
        "deflate", "gzip"]  # fmt: skip
    # Without a credential nothing is hidden, so nothing changes: the agent's coding passes.
    url = f"{harness.url}/t/open/v1/gzip"
    passed = httpx.get(url, headers={**agent.headers("GET", url), "Accept-Encoding": "gzip"})
    assert passed.status_code == 200 and passed.headers["content-encoding"] == "gzip"
    assert passed.json()["key"] == "none"  # decoded by httpx, since it is announced
    assert coded_target.seen[-1].header("accept-encoding") == ["gzip"]
    assert "decoded" not in harness.exchanges(1, target="open")[0].detail


def test_a_large_decoded_answer_streams_whole_and_masked(
    harness: Harness, coded_target: RawUpstream
) -> None:
    _keyed(harness, coded_target.url)
    agent = harness.agent()
    url = f"{harness.url}/t/api/v1/large"
    received, head, tail = 0, b"", b""
    with httpx.stream("GET", url, headers=agent.headers("GET", url), timeout=60) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_raw():
            head = head or chunk[:12]
            tail = (tail + chunk)[-12:]
            assert b"real" not in chunk
            received += len(chunk)
    assert received == LARGE + 24 and head == tail == b"*" * 12
    event = harness.exchanges(1, target="api")[0]
    assert event.bytes_out == LARGE + 24 and event.detail["credential_masked"] == 2


def test_revocation_ends_a_decoding_transfer_in_flight(
    harness: Harness, coded_target: RawUpstream
) -> None:
    """A chunk of the target's answer may decode to 64 MiB: the token is checked again
    between the pieces, not only between the chunks (a slow reader would take seconds)."""
    _keyed(harness, coded_target.url)
    agent = harness.agent(task="T-bomb")
    url = f"{harness.url}/t/api/v1/bomb"
    revoker = threading.Timer(
        0.5, lambda: harness.run(harness.identity.revoke("task", "T-bomb", reason="x", by="t"))
    )
    received, started = 0, time.monotonic()
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream("GET", url, headers=agent.headers("GET", url), timeout=60) as answer,
    ):
        assert answer.status_code == 200 and "content-encoding" not in answer.headers
        revoker.start()
        for chunk in answer.iter_raw():
            received += len(chunk)
            time.sleep(0.01)  # ~6 MB/s: 64 MiB would take ten seconds
    assert time.monotonic() - started < 5
    assert 0 < received < 64 << 20
    (exchange,) = harness.exchanges(1, target="api", task="T-bomb")
    assert "no longer valid" in exchange.detail["error"]
    assert exchange.detail["decoded"] == "gzip"


def test_a_coded_answer_that_cannot_be_decoded_is_refused_or_cut(
    harness: Harness, coded_target: RawUpstream
) -> None:
    _keyed(harness, coded_target.url)
    for kind, coding in (("br", "'br'"), ("twice", "'gzip, gzip'")):
        refused = _get(harness, f"/v1/{kind}")
        assert refused.status_code == 502, kind
        assert refused.headers["content-type"] == "application/problem+json"
        assert f"Content-Encoding {coding}" in refused.json()["detail"]
        assert b"real-key" not in refused.content
    # A body that ends inside its gzip stream: the head went out, so the answer is cut
    # (never one that looks complete), and the event says why.
    agent = harness.agent()
    url = f"{harness.url}/t/api/v1/truncated"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url, headers=agent.headers("GET", url), timeout=30)
    events = harness.exchanges(3, target="api")
    assert [e.action["status"] for e in events] == [502, 502, 200]
    assert "truncated" in events[-1].detail["error"] and events[-1].detail["decoded"] == "gzip"
    assert "real-key" not in repr(harness.events())


def test_a_range_is_not_forwarded_and_a_partial_answer_is_refused(harness: Harness) -> None:
    """A range could cut the secret at its edges (two ranges give its two halves): the
    agent's ``Range`` is dropped, and a 206 anyway is a 502."""
    partial = {"on": False}

    def answer(seen: RawSeen) -> bytes:
        if partial["on"]:
            body = b"-real-key"
            return (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 3-11/12\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        return ok(b"the-real-key")

    target = RawUpstream(answer).start()
    try:
        _keyed(harness, target.url)
        whole = _get(harness, "/v1/x", Range="bytes=3-11", **{"If-Range": '"e"'})
        assert (whole.status_code, whole.content) == (200, b"*" * 12)
        assert target.seen[-1].header("range") == [] == target.seen[-1].header("if-range")
        partial["on"] = True
        refused = _get(harness, "/v1/x", Range="bytes=3-11")
        assert refused.status_code == 502 and "206" in refused.json()["detail"]
        assert b"real" not in refused.content
    finally:
        target.stop()


def test_a_refused_websocket_upgrade_is_masked(harness: Harness) -> None:
    """A target that answers an upgrade with an ordinary response (relayed as such)."""

    def answer(seen: RawSeen) -> bytes:
        body = b"bad key: %s..." % seen.header("x-api-key")[0].encode()
        return b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    target = RawUpstream(answer).start()
    try:
        _keyed(harness, target.url)
        agent = harness.agent()
        url = f"{harness.url}/t/api/v1/ws"
        headers = {
            **agent.headers("GET", url),
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        refused = httpx.get(url, headers=headers, timeout=30)
        assert (refused.status_code, refused.content) == (400, b"bad key: " + b"*" * 12 + b"...")
        assert target.seen[-1].header("accept-encoding") == ["identity"]
    finally:
        target.stop()
