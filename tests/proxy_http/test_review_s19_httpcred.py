"""Probes of a red-team review of the HTTP broker's credentials (session 19), end to end
with real upstreams on loopback and raw sockets: each one failed before its fix."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tether.proxy.http.headers import TargetBase, response_headers
from tether.vault.http_inject import Injection
from tether.vault.oauth2 import ClientCredentials, OAuth2Error, OAuth2Tokens

from .conftest import Harness
from .rawupstream import RawSeen, RawUpstream, ok
from .upstream import Upstream

POLICY = """
rules:
  - id: anything
    effect: allow
    agents: [bot]
    http: {methods: ["*"], paths: ["/**"]}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path, POLICY)
    yield made
    made.stop()


# --- 1. a path that always answers 401 made one token request per request ------------------


def test_a_path_answering_401_does_not_make_a_token_request_each_time(
    node: Harness, upstream: Upstream
) -> None:
    """Every 401 from the target dropped the cached token, so an agent allowed a path the
    OAuth client's scope does not cover (answered 401 whatever the token) made Tether ask
    the token endpoint at each of its requests: a quota other agents of the target share."""
    node.put_secret("oauth-secret", b"client-secret-1")
    node.add_target("api", base_url=upstream.url, credential={
        "type": "oauth2_client_credentials", "token_url": upstream.url + "/oauth/token",
        "client_id": "client-1", "secret": "oauth-secret",
    })  # fmt: skip
    agent = node.agent()
    url = f"{node.url}/t/api/status/401"
    for _ in range(8):
        assert httpx.get(url, headers=agent.headers("GET", url)).status_code == 401
    assert len(upstream.issued) == 2  # the first token, and one fetched after its refusal
    protected = f"{node.url}/t/api/protected"  # the last token issued is still good
    assert httpx.get(protected, headers=agent.headers("GET", protected)).status_code == 200
    assert len(upstream.issued) == 2


async def test_a_token_refused_again_is_dropped_once_the_backoff_passed() -> None:
    now = [0.0]
    issued: list[bytes] = []

    def respond(seen: RawSeen) -> bytes:
        issued.append(b"tok-%d" % (len(issued) + 1))
        return ok(b'{"access_token": "' + issued[-1] + b'", "expires_in": 3600}')

    server = RawUpstream(respond).start()
    tokens = OAuth2Tokens(clock=lambda: now[0], refusal_backoff=10.0)
    client = ClientCredentials(server.url + "/token", "c", b"client-secret")
    try:
        assert await tokens.token(client, None) == "tok-1"
        tokens.forget(client, "tok-1")  # refused: fetched anew at once
        assert await tokens.token(client, None) == "tok-2"
        now[0] += 1
        tokens.forget(client, "tok-2")  # refused at once too: not about the token's age
        assert await tokens.token(client, None) == "tok-2"
        now[0] += 10
        tokens.forget(client, "tok-2")  # refused after the backoff: fetched anew
        assert await tokens.token(client, None) == "tok-3"
        assert tokens.fetches == 3
    finally:
        server.stop()


# --- 2. a query credential shadowed by the agent's parameter in another case ----------------


@pytest.mark.parametrize("name", ["API_KEY", "Api_Key", "API%5fKEY", "ap%C4%B1_key"])
def test_the_agents_parameter_in_another_case_is_dropped(
    node: Harness, upstream: Upstream, name: str
) -> None:
    """ASP.NET reads query parameter names case-insensitively (ordinal: dotless i is ``I``) and
    binds the first occurrence: the agent's ``API_KEY`` before the injected ``api_key``
    replaced the credential, while the audit trail says Tether's was sent."""
    node.put_secret("key", b"the-real-key-0123")
    node.add_target("api", base_url=upstream.url,
                    credential={"type": "query", "secret": "key", "param": "api_key"})  # fmt: skip
    agent = node.agent()
    url = f"{node.url}/t/api/v1/a?{name}=agent-chosen&x=1"
    response = httpx.get(url, headers=agent.headers("GET", url.partition("?")[0]))
    assert response.status_code == 200, response.text
    assert upstream.seen[-1].target == "/v1/a?x=1&api_key=the-real-key-0123"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["api_key", "API_KEY", "api%5Fkey", "ApI%5fKeY", "x", "=",
                                 "&", "%", "\u0131", "ap\u0131_key", "v", "api_key2"]),
                max_size=12).map("".join))  # fmt: skip
def test_the_credential_parameter_is_sent_once_and_last(query: str) -> None:
    """Whatever the agent's query, the target gets one parameter that a case-insensitive,
    decoding reader takes for the credential's: Tether's, last."""
    injection = Injection(query_param=("api_key", "secret"))
    sent = injection.query(query).split("&")
    assert sent[-1] == "api_key=secret"
    folded = [unquote(p.partition("=")[0]).upper().lower() for p in sent[:-1]]
    assert "api_key" not in folded


# --- 3. a redirect of a target with a base path ---------------------------------------------


def test_a_redirect_under_the_base_path_is_the_agents_path(node: Harness) -> None:
    """With base URL ``.../v2``, the target's ``Location: /v2/items/7`` became
    ``/t/api/v2/items/7``, which reaches ``/v2/v2/items/7``; an absolute redirect to the
    target itself went as is: the agent got the target's address and a URL without the
    credential."""

    def answer(seen: RawSeen) -> bytes:
        locations = {
            "/v2/relative": b"/v2/items/7?x=1",
            "/v2/absolute": b"http://127.0.0.1:%d/v2/items/8" % target.port,
            "/v2/outside": b"/elsewhere",
            "/v2/other-host": b"https://other.example/v2/items/9",
        }
        location = locations.get(seen.target)
        if location is None:
            return ok(seen.target.encode())
        return b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"

    node.put_secret("key", b"the-real-key-0123")
    target = RawUpstream(answer).start()
    try:
        node.add_target("api", base_url=target.url + "/v2", credential={
            "type": "header", "secret": "key", "header_name": "X-Api-Key"})  # fmt: skip
        agent = node.agent()
        shown = {}
        for path in ("/relative", "/absolute", "/outside", "/other-host"):
            url = f"{node.url}/t/api{path}"
            response = httpx.get(url, headers=agent.headers("GET", url))
            assert response.status_code == 302
            shown[path] = response.headers["location"]
        assert shown == {
            "/relative": "/t/api/items/7?x=1",
            "/absolute": "/t/api/items/8",
            "/outside": "/t/api/elsewhere",  # as before: no path of the agent's is better
            "/other-host": "https://other.example/v2/items/9",
        }
        url = node.url + shown["/absolute"]  # followed, it reaches what the target meant
        followed = httpx.get(url, headers=agent.headers("GET", url))
        assert followed.text == "/v2/items/8"
    finally:
        target.stop()


_BASE = TargetBase("https", "api.example", 443, b"/v2")
_PIECES = ["/", "//", "/v2", "/v2/", "https://api.example", "https://API.example:443",
           "http://api.example", "https://api.example:8443", "https://u@api.example",
           "https://evil.example", "?q", "x", "%2F", ":", "[", "@", "#f", "\\"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=6).map("".join), st.booleans())
@example("/v2/\\evil.example", False)  # a browser's //evil.example
@example("https://api.example/v2//evil.example", False)
def test_a_mapped_location_stays_with_the_target(location: str, path_form: bool) -> None:
    """A Location is never made to leave the target: on the path form it is under
    ``/t/api/``, or dropped, or passed as the target wrote it; on the host form never a
    network-path reference (``//host``) that the target did not write."""
    value = location.encode()
    prefix = "/t/api" if path_form else None
    kept = response_headers([(b"location", value)], "api", path_prefix=prefix, base=_BASE)
    if not kept:
        assert path_form and value.startswith(b"//")
        return
    ((_, shown),) = kept
    if path_form:
        assert shown.startswith(b"/t/api/") or shown == value
        if shown != value:
            assert value.startswith(b"/") or _BASE.own_path(value) is not None
    elif shown != value:
        assert shown[:1] == b"/" and shown[1:2] not in (b"/", b"\\"), shown


# --- 4. the target's Content-Encoding quoted into the 502 -----------------------------------


def test_a_coding_the_target_wrote_never_shows_the_credential(node: Harness) -> None:
    """A body that cannot be scanned is a 502 naming the target's Content-Encoding, which
    response_headers never filtered: a target that reflects request headers into its answer
    (the key into Content-Encoding here) gave the agent and the audit trail the key."""
    key = "the-real-key-0123"

    def answer(seen: RawSeen) -> bytes:
        coding = b"br, " + seen.header("x-api-key")[0].encode()
        return ok(b"\x00\x01", b"Content-Encoding: " + coding)

    node.put_secret("key", key.encode())
    target = RawUpstream(answer).start()
    try:
        node.add_target("api", base_url=target.url, credential={
            "type": "header", "secret": "key", "header_name": "X-Api-Key"})  # fmt: skip
        agent = node.agent()
        url = f"{node.url}/t/api/v1/a"
        response = httpx.get(url, headers=agent.headers("GET", url))
        assert response.status_code == 502
        assert "Content-Encoding" in response.text and key not in response.text
        (event,) = node.exchanges(1)
        assert key not in repr(event.detail), event.detail
    finally:
        target.stop()


# --- 5. a coded token answer decoded whole before the size limit ----------------------------


def _gzip(pieces: Iterable[bytes]) -> bytes:
    stream = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join([*(stream.compress(p) for p in pieces), stream.flush()])


_ZEROS = _gzip(b"\0" * (1 << 20) for _ in range(64))  # 64 MiB in 64 KiB
_TOKEN = b'{"access_token": "tok-1", "expires_in": 3600}'


@pytest.mark.parametrize(
    ("coding", "body", "error"),
    [
        (b"gzip, gzip", _gzip([_ZEROS]), "unsupported Content-Encoding"),  # 184 bytes
        (b"gzip", _ZEROS, "too large"),
        (b"br", b"\x0b\x02\x80{}\x03", "unsupported Content-Encoding"),
        (b"gzip", _gzip([_TOKEN])[:-4], "does not decode"),
        (b"gzip", _gzip([_TOKEN]) + b"junk", "does not decode"),
        (b"gzip", _gzip([_TOKEN]), None),
        (b"deflate", zlib.compress(_TOKEN), None),
        (b"identity", _TOKEN, None),
    ],
    ids=[
        "gzip-gzip-bomb",
        "gzip-bomb",
        "br",
        "truncated",
        "trailing",
        "gzip",
        "deflate",
        "identity",
    ],
)
async def test_a_coded_token_answer_is_decoded_within_the_limit(
    coding: bytes, body: bytes, error: str | None
) -> None:
    """The endpoint is asked for identity; httpx decoded whatever it sent, every coding of
    a chain, whole, before the 64 KiB limit was checked: 184 bytes of 'gzip, gzip' took
    64 MiB (a few KiB take gigabytes, and the node with them)."""
    server = RawUpstream(lambda seen: ok(body, b"Content-Encoding: " + coding)).start()
    tokens = OAuth2Tokens()
    client = ClientCredentials(server.url + "/token", "c", b"client-secret")
    tracemalloc.start()
    try:
        if error is None:
            assert await tokens.token(client, None) == "tok-1"
        else:
            with pytest.raises(OAuth2Error, match=error):
                await tokens.token(client, None)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
        server.stop()


# --- 6. a dotted spelling of Accept-Encoding or Range ---------------------------------------


@pytest.mark.parametrize("header", ["Accept.Encoding: br", "If.Range: x", "accept_encoding: br"])
def test_a_dotted_spelling_of_a_coding_header_is_not_forwarded(
    node: Harness, upstream: Upstream, header: str
) -> None:
    """The broker reads '_' and '.' in header names as '-' (CGI and PHP fold both), but the
    headers that keep a body scannable were dropped under the '_' spelling only."""
    node.put_secret("key", b"the-real-key-0123")
    node.add_target("api", base_url=upstream.url, credential={
        "type": "header", "secret": "key", "header_name": "X-Api-Key"})  # fmt: skip
    agent = node.agent()
    url = f"{node.url}/t/api/v1/a"
    name, _, value = header.partition(": ")
    response = httpx.get(url, headers={**agent.headers("GET", url), name: value})
    assert response.status_code == 200
    names = [n for n, _ in upstream.seen[-1].headers]
    assert name.lower() not in names and names.count("accept-encoding") == 1, names


def test_a_cookie_path_under_the_base_path_is_the_agents_path(node: Harness) -> None:
    """As for redirects: ``Path=/v2/session`` became ``/t/api/v2/session``, a path the agent
    never asks for (its ``/t/api/session`` is the target's ``/v2/session``): the cookie was
    never sent back."""
    answer = ok(b"ok", b"Set-Cookie: sid=1; Path=/v2/session; HttpOnly",
                b"Set-Cookie: top=2; Path=/v2", b"Set-Cookie: other=3; Path=/v20")  # fmt: skip
    target = RawUpstream(lambda seen: answer).start()
    try:
        node.add_target("api", base_url=target.url + "/v2")
        agent = node.agent()
        url = f"{node.url}/t/api/v1/a"
        response = httpx.get(url, headers=agent.headers("GET", url))
        assert response.headers.get_list("set-cookie") == [
            "api.sid=1; Path=/t/api/session; HttpOnly",
            "api.top=2; Path=/t/api/",
            "api.other=3; Path=/t/api/v20",  # not under the base path: as before
        ]
    finally:
        target.stop()
