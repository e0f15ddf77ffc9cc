"""Running one Tether node: store, policy set, HTTP API and policy watcher, until a signal.

``SIGTERM`` or ``SIGINT`` stops the node gracefully: the server stops accepting, finishes
the requests in flight, the watcher stops and the store closes; then the process exits 0.
A second ``SIGINT`` skips the wait for requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from typing import Final

import uvicorn

from tether.api import AppState, create_app
from tether.config import Settings
from tether.policywatch import LoadRefused, PolicyReloader, load_initial
from tether.store import Store, StoreError

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS: Final = 10


class StartupError(Exception):
    """The node cannot start; the message says why."""


def bind(settings: Settings) -> socket.socket:
    """The listening socket for ``settings.listen``; raises :class:`StartupError`."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        return socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise StartupError(f"cannot listen on {settings.listen}: {reason}") from None


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # run_node handles the signals itself; uvicorn's own handlers would re-raise the
        # signal after shutdown and kill the process before the store is closed.
        yield


async def run_node(settings: Settings, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM/SIGINT; raises :class:`StartupError` before serving."""
    try:
        store = await Store.open(settings.database)
    except StoreError as error:
        raise StartupError(str(error)) from None
    try:
        await _serve(settings, sock, store)
    finally:
        await store.close()


async def _serve(settings: Settings, sock: socket.socket, store: Store) -> None:
    try:
        holder = await load_initial(settings.policies, store)
    except LoadRefused as error:
        raise StartupError(f"policies did not load: {error}") from None
    server = _Server(_uvicorn_config(settings, AppState(holder, store)))
    stop = asyncio.Event()
    _handle_signals(server, stop)
    watcher = None
    if settings.policy_watch:
        reloader = PolicyReloader(settings.policies, store, holder)
        watcher = asyncio.create_task(reloader.watch(stop))
    host, port = sock.getsockname()[:2]
    log.info(
        "tether serving on http://%s:%d (policies: %s)", _bracket(host), port, settings.policies
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        stop.set()
        if watcher is not None:
            await watcher
    log.info("tether stopped")


def _uvicorn_config(settings: Settings, state: AppState) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_config=None,  # the CLI configures logging (tether.cli.common.configure_logging)
        log_level=settings.log_level,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )


def _handle_signals(server: uvicorn.Server, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop, server, stop, sig)


def _stop(server: uvicorn.Server, stop: asyncio.Event, sig: signal.Signals) -> None:
    if server.should_exit and sig == signal.SIGINT:
        server.force_exit = True
        return
    log.info("%s received, shutting down", sig.name)
    server.should_exit = True
    stop.set()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
