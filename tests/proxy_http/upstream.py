"""A real HTTP/1.1 upstream on loopback (h11 over asyncio, in its own thread), plain or TLS.

It records every request exactly as it arrived on the wire (the request line's target and
the headers), so tests can assert what the broker forwarded. Endpoints:

* ``/big?n=N``: N bytes of body, streamed in 64 KiB chunks (chunked encoding);
* ``/upload``: reads the whole body, answers its size and SHA-256;
* ``/slow?s=S``: answers after S seconds;
* ``/cookie``: sets two cookies; ``/redirect``: 302 to ``/landing``;
* ``/leak``: answers with the request's ``Authorization`` header in a response header
  (a broken target: the broker must not pass it on);
* ``/status/N``: answers status N;
* ``/v1/echo``: the request echoed back as JSON, as httpbin's ``/anything`` does: its
  target, headers, decoded query arguments and decoded basic credentials;
* ``/v1/echo-big?n=N``: N bytes streamed in 64 KiB chunks (chunked encoding), a block of
  filler and the request's ``X-Api-Key`` in brackets, over and over (so many of them
  straddle chunk boundaries);
* anything else: 200 ``{"ok": true, "method": ..., "target": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import h11

CHUNK = 65536
BLOCK = bytes(range(256)) * (CHUNK // 256)


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_size: int = 0
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]


@dataclass
class Upstream:
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    # The OAuth token endpoint (/oauth/token): the client it knows, the tokens it issued.
    oauth_client: tuple[str, str] = ("client-1", "client-secret-1")
    oauth_expires_in: int = 3600
    oauth_delay: float = 0.0
    issued: list[str] = field(default_factory=list)

    def start(self) -> Upstream:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = await asyncio.start_server(
                self._serve, "127.0.0.1", 0, ssl=self.tls, limit=CHUNK * 2
            )
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            await self.server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(main())

    def stop(self) -> None:
        def cancel() -> None:
            self.server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(cancel)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next(conn, reader)
                if not isinstance(request, h11.Request):
                    break
                await self._answer(conn, reader, writer, request)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
    ) -> None:
        target = request.target.decode("latin-1")
        seen = Seen(
            request.method.decode(),
            target,
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers],
        )
        self.seen.append(seen)
        digest = hashlib.sha256()
        while True:
            event = await _next(conn, reader)
            if isinstance(event, h11.Data):
                seen.body_size += len(event.data)
                if seen.body_size <= CHUNK:
                    seen.body += bytes(event.data)
                digest.update(event.data)
            else:
                break
        path, _, query = target.partition("?")
        args = {k: v[0] for k, v in parse_qs(query).items()}
        await self._respond(conn, writer, seen, path, args, digest.hexdigest())

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        seen: Seen,
        path: str,
        args: dict[str, str],
        sha: str,
    ) -> None:
        if path == "/v1/echo-big":
            await self._echo_big(conn, writer, seen, int(args.get("n", "0")))
            return
        if path == "/big":
            size = int(args.get("n", "0"))
            writer.write(conn.send(h11.Response(status_code=200, headers=[
                ("content-type", "application/octet-stream"), ("transfer-encoding", "chunked")
            ])))  # fmt: skip
            sent = 0
            while sent < size:
                piece = BLOCK[: min(CHUNK, size - sent)]
                writer.write(conn.send(h11.Data(data=piece)))
                sent += len(piece)
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
        status, headers, body = 200, [("content-type", "application/json")], b""
        if path == "/upload":
            body = json.dumps({"size": seen.body_size, "sha256": sha}).encode()
        elif path == "/slow":
            await asyncio.sleep(float(args.get("s", "1")))
        elif path == "/cookie":
            headers += [("set-cookie", "sid=abc; Path=/; Domain=example.com; HttpOnly"),
                        ("set-cookie", "pref=1")]  # fmt: skip
        elif path == "/redirect":
            status, headers = 302, [*headers, ("location", "/landing")]
        elif path == "/leak":
            headers += [("x-leak", ", ".join(seen.header("authorization")) or "-")]
        elif path == "/oauth/token":
            status, body = await self._token(seen)
        elif path == "/protected":
            authorization = seen.header("authorization")
            if not self.issued or authorization != [f"Bearer {self.issued[-1]}"]:
                status = 401
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        elif path == "/v1/echo":
            body = _echo(seen, args)
        if not body:
            body = json.dumps({"ok": status < 400, "method": seen.method,
                               "target": seen.target}).encode()  # fmt: skip
        headers.append(("content-length", str(len(body))))
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _echo_big(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, seen: Seen, size: int
    ) -> None:
        unit = b"-" * 1000 + b"[" + (seen.header("x-api-key") or [""])[0].encode() + b"]"
        data = unit * (2 * CHUNK // len(unit) + 2)
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("content-type", "application/octet-stream"), ("transfer-encoding", "chunked")
        ])))  # fmt: skip
        sent = 0
        while sent < size:
            start = sent % len(unit)
            piece = data[start : start + min(CHUNK, size - sent)]
            writer.write(conn.send(h11.Data(data=piece)))
            sent += len(piece)
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _token(self, seen: Seen) -> tuple[int, bytes]:
        await asyncio.sleep(self.oauth_delay)
        form = {k: v[0] for k, v in parse_qs(seen.body.decode()).items()}
        basic = seen.header("authorization")
        if basic:
            pair = base64.b64decode(basic[0].removeprefix("Basic ")).decode()
            client = tuple(unquote(part) for part in pair.split(":", 1))
        else:
            client = (form.get("client_id", ""), form.get("client_secret", ""))
        if client != self.oauth_client or form.get("grant_type") != "client_credentials":
            return 401, b'{"error": "invalid_client"}'
        token = f"upstream-token-{len(self.issued) + 1}"
        self.issued.append(token)
        answer = {"access_token": token, "token_type": "Bearer",
                  "expires_in": self.oauth_expires_in}  # fmt: skip
        return 200, json.dumps(answer).encode()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(CHUNK)
            conn.receive_data(data)
            continue
        return event


def _echo(seen: Seen, args: dict[str, str]) -> bytes:
    """The request as an echo endpoint shows it (httpbin's ``/anything``, a debug page)."""
    basic = None
    for value in seen.header("authorization"):
        if value.startswith("Basic "):
            basic = base64.b64decode(value.removeprefix("Basic ")).decode()
    echo = {"method": seen.method, "target": seen.target, "headers": dict(seen.headers),
            "args": args, "basic": basic}  # fmt: skip
    return json.dumps(echo, ensure_ascii=False).encode()
