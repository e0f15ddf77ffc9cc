"""An independent syslog receiver: RFC 6587 octet counting over TCP or TLS, RFC 5424 parsed.

Run as its own process by the tests (``python -m tests.audit_export.receivers.syslog_receiver
--port 0 --out FILE [--cert C --key K [--client-ca CA]]``). It prints ``listening <port>``
once bound, then appends one JSON line per message to ``--out`` (flushed at once):
``{"pri":..,"timestamp":..,"hostname":..,"app":..,"procid":..,"msgid":..,"sd":{..},"msg":..}``
or ``{"error": ...}`` for a frame or message that does not parse (the connection is then
closed, as a strict receiver would).

The parser is written from the RFCs, not from Tether's formatter, so that the two check
each other.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import socketserver
import ssl
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

MAX_FRAME = 1 << 24
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z")
_lock = threading.Lock()


class ParseError(ValueError):
    pass


def read_frame(stream: BinaryIO) -> bytes | None:
    """One octet-counted frame (``MSG-LEN SP MSG``); None at a clean end of stream."""
    digits = b""
    while True:
        char = stream.read(1)
        if not char:
            if digits:
                raise ParseError("stream ended inside MSG-LEN")
            return None
        if char == b" ":
            break
        if not char.isdigit() or (not digits and char == b"0") or len(digits) > 8:
            raise ParseError(f"bad MSG-LEN octet {char!r}")
        digits += char
    if not digits:
        raise ParseError("empty MSG-LEN")
    length = int(digits)
    if length > MAX_FRAME:
        raise ParseError("frame too large")
    data = b""
    while len(data) < length:
        chunk = stream.read(length - len(data))
        if not chunk:
            raise ParseError("stream ended inside a frame")
        data += chunk
    return data


def _token(text: str, pos: int) -> tuple[str, int]:
    end = text.find(" ", pos)
    if end < 0:
        raise ParseError("header ends early")
    value = text[pos:end]
    if not value or any(not (33 <= ord(c) <= 126) for c in value):
        raise ParseError(f"bad header field {value!r}")
    return value, end + 1


def _sd_name(text: str, pos: int, stops: str) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] not in stops:
        if not (33 <= ord(text[pos]) <= 126) or text[pos] in '="]':
            raise ParseError("bad SD name")
        pos += 1
    if not (1 <= pos - start <= 32):
        raise ParseError("SD name length")
    return text[start:pos], pos


def _sd_value(text: str, pos: int) -> tuple[str, int]:
    if text[pos : pos + 1] != '"':
        raise ParseError("SD value must be quoted")
    pos += 1
    out = []
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text) and text[pos + 1] in '"\\]':
            out.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        elif char == "]":
            raise ParseError("unescaped ] in SD value")
        else:
            out.append(char)
            pos += 1
    raise ParseError("SD value not closed")


def _structured_data(text: str, pos: int) -> tuple[dict[str, dict[str, str]], int]:
    if text[pos : pos + 1] == "-":
        return {}, pos + 1
    elements: dict[str, dict[str, str]] = {}
    while text[pos : pos + 1] == "[":
        sd_id, pos = _sd_name(text, pos + 1, " ]")
        params: dict[str, str] = {}
        while text[pos : pos + 1] == " ":
            name, pos = _sd_name(text, pos + 1, "=")
            if text[pos : pos + 1] != "=":
                raise ParseError("expected =")
            params[name], pos = _sd_value(text, pos + 1)
        if text[pos : pos + 1] != "]":
            raise ParseError("SD element not closed")
        elements[sd_id] = params
        pos += 1
    if not elements:
        raise ParseError("expected structured data")
    return elements, pos


def parse_message(data: bytes) -> dict[str, Any]:
    """An RFC 5424 SYSLOG-MSG as a dict; :class:`ParseError` if it is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ParseError("not UTF-8") from error
    match = re.match(r"<(\d{1,3})>1 ", text)
    if match is None or int(match.group(1)) > 191:
        raise ParseError("bad PRI/VERSION")
    pos = match.end()
    fields = {}
    for name, limit in (("timestamp", 64), ("hostname", 255), ("app", 48), ("procid", 128),
                        ("msgid", 32)):  # fmt: skip
        fields[name], pos = _token(text, pos)
        if len(fields[name]) > limit:
            raise ParseError(f"{name} too long")
    if fields["timestamp"] != "-" and not _TIMESTAMP.match(fields["timestamp"]):
        raise ParseError("bad TIMESTAMP")
    sd, pos = _structured_data(text, pos)
    msg = None
    if pos < len(text):
        if text[pos] != " ":
            raise ParseError("expected SP before MSG")
        msg = text[pos + 1 :].removeprefix("\ufeff")
    pri = int(match.group(1))
    return {"pri": pri, "facility": pri // 8, "severity": pri % 8, **fields, "sd": sd, "msg": msg}


class _Handler(socketserver.StreamRequestHandler):
    out: BinaryIO

    def handle(self) -> None:
        while True:
            try:
                frame = read_frame(self.rfile)
                if frame is None:
                    return
                record: dict[str, Any] = parse_message(frame)
            except ParseError as error:
                record = {"error": str(error)}
            except (OSError, ssl.SSLError):
                return
            with _lock:
                self.out.write(json.dumps(record).encode() + b"\n")
                self.out.flush()
            if "error" in record:
                return


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, context: ssl.SSLContext | None) -> None:
        self.context = context
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a failed TLS handshake is the client's problem, not a crash


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.client_ca)
    _Handler.out = Path(args.out).open("ab")  # noqa: SIM115 - open for the process's life
    server = _Server(args.port, context)
    print(f"listening {server.server_address[1]}", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
