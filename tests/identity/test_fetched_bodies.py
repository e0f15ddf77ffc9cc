"""Answers Tether fetches for itself are capped after decoding (tether.httpbody).

httpx decodes every content coding of a chain, each layer whole, before a caller reading
``aiter_bytes`` can count: a JWKS endpoint (or an OIDC provider's discovery document or
token answer) of a few hundred bytes sent as ``Content-Encoding: gzip, gzip`` took tens of
MiB, a few KiB more gigabytes, before the 1 MiB cap was checked. Real HTTP servers on
loopback; the memory is measured with tracemalloc.
"""

from __future__ import annotations

import gzip
import json
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tether.httpbody import BodyError, decoded
from tether.identity.jwks import JwksError, http_fetcher
from tether.users.config import OidcLoginConfig
from tether.users.oidc import OidcLogin, OidcLoginError

_ZEROS = b"\0" * (64 << 20)  # 64 MiB of zeros: 64 KiB gzipped, 184 bytes gzipped twice
_BOMB = gzip.compress(gzip.compress(_ZEROS, 9), 9)
_JWKS = json.dumps({"keys": []}).encode()


class Server:
    """Answers every request with ``body`` and the ``Content-Encoding`` given; records the
    ``Accept-Encoding`` each request sent."""

    def __init__(self, body: bytes, coding: str | None) -> None:
        self.accepted: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.accepted.append(self.headers.get("accept-encoding"))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if coding is not None:
                    self.send_header("content-encoding", coding)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Server] = []

    def start(body: bytes, coding: str | None) -> Server:
        servers.append(Server(body, coding))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def peak() -> Iterator[Any]:
    tracemalloc.start()
    yield lambda: tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()


@pytest.mark.parametrize(
    ("body", "coding", "error"),
    [
        (_BOMB, "gzip, gzip", "unsupported Content-Encoding"),
        (gzip.compress(_ZEROS[: 4 << 20]), "gzip", "too large"),
        (b"\x0b\x02\x80{}\x03", "br", "unsupported Content-Encoding"),
    ],
    ids=["gzip-gzip-bomb", "gzip-bomb", "br"],
)
async def test_a_coded_jwks_answer_is_refused_within_the_limit(
    serve: Any, peak: Any, body: bytes, coding: str, error: str
) -> None:
    server = serve(body, coding)
    with pytest.raises(JwksError, match=error):
        await http_fetcher(server.url + "/jwks", timeout=5.0)()
    assert peak() < 8 << 20
    assert server.accepted == ["identity"]  # a well-behaved server sends no coding at all


@pytest.mark.parametrize("coding", [None, "gzip", "identity"])
async def test_a_jwks_answer_is_read_plain_or_gzipped(serve: Any, coding: str | None) -> None:
    body = gzip.compress(_JWKS) if coding == "gzip" else _JWKS
    server = serve(body, coding)
    assert json.loads(await http_fetcher(server.url + "/jwks", timeout=5.0)()) == {"keys": []}


async def test_an_oidc_discovery_bomb_is_refused_within_the_limit(serve: Any, peak: Any) -> None:
    server = serve(_BOMB, "gzip, gzip")
    config = OidcLoginConfig(issuer=server.url, client_id="tether")
    login = OidcLogin(
        config, lambda: None,  # type: ignore[arg-type, return-value]
        None,  # type: ignore[arg-type]
        redirect_uri="http://127.0.0.1/cb", clock=lambda: datetime.now(UTC),
    )  # fmt: skip
    with pytest.raises(OidcLoginError, match="cannot be reached or answered nonsense"):
        await login.start()  # discovery fails before anything touches the user store
    assert peak() < 8 << 20
    assert server.accepted == ["identity"]


def test_decoding_stops_at_the_limit_whatever_the_ratio() -> None:
    for limit in (0, 1, 1000, 1 << 20):
        with pytest.raises(BodyError, match="too large"):
            decoded(gzip.compress(b"a" * (limit + 1)), ["gzip"], limit)
        assert decoded(gzip.compress(b"a" * limit), ["gzip"], limit) == b"a" * limit
