"""An independent HTTP receiver for the HEC and webhook sinks, run as its own process.

``python -m tests.audit_export.receivers.http_receiver --mode hec|webhook --secret S
--out FILE [--port P] [--cert C --key K] [--fail N] [--ack]`` prints ``listening <port>``
once bound. Each accepted event is appended to ``--out`` as one JSON line
``{"delivery": .., "event": {..}}``; each refused request as ``{"refused": status, ..}``.

* ``hec``: ``Authorization: Splunk <secret>`` is required (401, HEC code 4, otherwise); the
  body is HEC's batch format, JSON objects one after another, each with an ``event``.
  With ``--ack``, answers carry an ``ackId`` and ``/services/collector/ack`` reports an ack
  as indexed from the second time it is asked (so the sink must really poll).
* ``webhook``: ``X-Tether-Signature: t=..,v1=..`` must be the HMAC-SHA256 with the secret
  of ``t + "." + body`` (checked here with this file's own code, in constant time, and
  ``t`` within five minutes), ``X-Tether-Delivery`` must be present, the body a JSON array.
* ``--fail N``: the first N requests are answered 503, as a busy server would.
* ``--no-answer N``: request number N is recorded, then the connection is closed without an
  answer, as when a receiver crashes after processing a batch but before acknowledging it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

_lock = threading.Lock()


class State:
    mode = "hec"
    secret = ""
    out: BinaryIO
    fail = 0
    no_answer = 0
    requests = 0
    ack = False
    next_ack = 0
    asked: dict[int, int] = {}  # noqa: RUF012 - process-wide state of this small server


def hec_objects(body: bytes) -> list[Any]:
    """The JSON objects of an HEC batch body, however they are separated."""
    decoder = json.JSONDecoder()
    text = body.decode("utf-8")
    objects, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return objects
        value, pos = decoder.raw_decode(text, pos)
        objects.append(value)


def signature_ok(header: str, body: bytes, secret: bytes) -> bool:
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    stamp = parts.get("t", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return False
    expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, lines: list[dict[str, Any]]) -> None:
        with _lock:
            for line in lines:
                State.out.write(json.dumps(line).encode() + b"\n")
            State.out.flush()
            State.requests += 1
            silent = State.requests == State.no_answer
        if silent:
            self.close_connection = True
            raise ConnectionAbortedError("no answer, on purpose")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with _lock:
            failing = State.fail > 0
            State.fail -= 1 if failing else 0
        if failing:
            self._record([{"refused": 503}])
            self._answer(503, {"text": "Server is busy", "code": 9})
            return
        if State.mode == "hec":
            self._hec(body)
        else:
            self._webhook(body)

    def _hec(self, body: bytes) -> None:
        if self.headers.get("Authorization") != f"Splunk {State.secret}":
            self._record([{"refused": 401}])
            self._answer(401, {"text": "Invalid token", "code": 4})
            return
        url = urlsplit(self.path)
        if url.path == "/services/collector/ack":
            self._hec_ack(body, parse_qs(url.query).get("channel", [""])[0])
            return
        try:
            objects = hec_objects(body)
            events = [obj["event"] for obj in objects]
        except (ValueError, KeyError, TypeError):
            self._answer(400, {"text": "Invalid data format", "code": 6})
            return
        self._record([{"delivery": None, "event": e, "hec": _envelope(o)}
                      for e, o in zip(events, objects, strict=True)])  # fmt: skip
        answer: dict[str, Any] = {"text": "Success", "code": 0}
        if State.ack:
            if not self.headers.get("X-Splunk-Request-Channel"):
                self._answer(400, {"text": "Data channel is missing", "code": 10})
                return
            with _lock:
                State.next_ack += 1
                answer["ackId"] = State.next_ack
        self._answer(200, answer)

    def _hec_ack(self, body: bytes, channel: str) -> None:
        if not channel or channel != self.headers.get("X-Splunk-Request-Channel"):
            self._answer(400, {"text": "Data channel is missing", "code": 10})
            return
        acks = {}
        with _lock:
            for ack_id in json.loads(body)["acks"]:
                State.asked[ack_id] = State.asked.get(ack_id, 0) + 1
                acks[str(ack_id)] = State.asked[ack_id] >= 2
        self._answer(200, {"acks": acks})

    def _webhook(self, body: bytes) -> None:
        signature = self.headers.get("X-Tether-Signature", "")
        delivery = self.headers.get("X-Tether-Delivery")
        if not signature_ok(signature, body, State.secret.encode()) or not delivery:
            self._record([{"refused": 401}])
            self._answer(401, {"error": "bad signature"})
            return
        events = json.loads(body)
        if not isinstance(events, list):
            self._answer(400, {"error": "expected an array"})
            return
        self._record([{"delivery": delivery, "event": event} for event in events])
        self._answer(200, {"ok": True})


def _envelope(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key != "event"}


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["hec", "webhook"], required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--fail", type=int, default=0)
    parser.add_argument("--ack", action="store_true")
    parser.add_argument("--no-answer", type=int, default=0)
    args = parser.parse_args()
    State.mode, State.secret, State.fail, State.ack = args.mode, args.secret, args.fail, args.ack
    State.no_answer = args.no_answer
    State.out = Path(args.out).open("ab")  # noqa: SIM115 - open for the process's life
    server = Server(("127.0.0.1", args.port), Handler)
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
