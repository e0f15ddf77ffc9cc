"""A small demo API to try the HTTP broker with (README quickstart, ``tether demo-upstream``).

The ``billing-api`` of examples/policies/http.yaml, in memory: ``GET /v1/invoices``,
``GET /v1/invoices/{id}``, ``POST /v1/invoices/{id}/refund``, ``DELETE /v1/invoices/{id}``
and ``GET /admin/stats``. Every route but ``/healthz`` wants ``X-Api-Key`` to hold the demo
key, so a call that works through Tether shows the credential was injected on the way,
while the agent never had it.

It is a demo, not a target to keep: the key is a public value (``DEMO_API_KEY``, or the
content of a file given to ``tether demo-upstream --key-file``), the data lives in memory,
and it listens on loopback by default. It never echoes the key back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
from collections.abc import Iterator
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DEMO_API_KEY: Final = "demo-key-not-a-secret"
DEMO_LISTEN: Final = "127.0.0.1:8766"


def demo_app(api_key: str = DEMO_API_KEY) -> Starlette:
    """The demo billing API, wanting ``X-Api-Key: <api_key>``."""
    invoices: dict[int, dict[str, Any]] = {
        7: {"id": 7, "customer": "c-12", "amount": 1250, "status": "paid"},
        8: {"id": 8, "customer": "c-40", "amount": 310, "status": "open"},
    }

    def refused(request: Request) -> JSONResponse | None:
        given = request.headers.get("x-api-key", "")
        if hmac.compare_digest(given.encode(), api_key.encode()):
            return None
        return JSONResponse({"error": "missing or wrong X-Api-Key"}, status_code=401)

    async def list_invoices(request: Request) -> JSONResponse:
        return refused(request) or JSONResponse({"invoices": list(invoices.values())})

    async def get_invoice(request: Request) -> JSONResponse:
        invoice = invoices.get(_invoice_id(request))
        found = JSONResponse(invoice or {"error": "no such invoice"},
                             status_code=200 if invoice else 404)  # fmt: skip
        return refused(request) or found

    async def refund(request: Request) -> JSONResponse:
        denied = refused(request)
        invoice = invoices.get(_invoice_id(request))
        if denied is not None or invoice is None:
            return denied or JSONResponse({"error": "no such invoice"}, status_code=404)
        invoice["status"] = "refunded"
        return JSONResponse(invoice)

    async def delete_invoice(request: Request) -> JSONResponse:
        denied = refused(request)
        if denied is not None:
            return denied
        return JSONResponse({"deleted": invoices.pop(_invoice_id(request), None) is not None})

    async def admin_stats(request: Request) -> JSONResponse:
        return refused(request) or JSONResponse({"invoices": len(invoices), "admins": 2})

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/v1/invoices", list_invoices, methods=["GET", "HEAD"]),
            Route("/v1/invoices/{id:int}", get_invoice, methods=["GET", "HEAD"]),
            Route("/v1/invoices/{id:int}", delete_invoice, methods=["DELETE"]),
            Route("/v1/invoices/{id:int}/refund", refund, methods=["POST"]),
            Route("/admin/stats", admin_stats, methods=["GET"]),
        ]
    )


def _invoice_id(request: Request) -> int:
    value: int = request.path_params["id"]
    return value


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the process that runs it handles signals


class DemoUpstream:
    """The demo API served on ``sock`` inside the running event loop."""

    def __init__(self, sock: socket.socket, api_key: str = DEMO_API_KEY) -> None:
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see tether.node.bind
        config = uvicorn.Config(
            demo_app(api_key), log_config=None, lifespan="off", server_header=False,
            access_log=False,
        )  # fmt: skip
        self.server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started and not self._task.done():
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
