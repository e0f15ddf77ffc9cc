"""``tether demo-upstream``: serve the demo API of the README quickstart on its own.

``make run`` already serves it from the node (``http_proxy.demo_upstream`` in
examples/tether.yaml); this command is for trying the broker against a node configured
without it. The API key it expects is the public demo key, or the first line of
``--key-file``; it is never taken from the command line.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from tether.cli.common import fail
from tether.proxy.http.demo import DEMO_API_KEY, DEMO_LISTEN


def demo_upstream(
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to serve on.", metavar="HOST:PORT")
    ] = DEMO_LISTEN,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="A file whose first line is the API key to expect.",
                     metavar="FILE"),
    ] = None,
) -> None:  # fmt: skip
    """Serve the demo billing API (behind X-Api-Key) until interrupted."""
    from tether.config import split_listen

    try:
        host, port = split_listen(listen)
    except ValueError as error:
        fail(f"--listen: {error}")
    key = DEMO_API_KEY if key_file is None else _read_key(key_file)
    try:
        asyncio.run(_serve(host, port, key))
    except OSError as error:
        fail(f"cannot listen on {listen}: {(error.strerror or str(error)).lower()}")


def _read_key(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        fail(f"--key-file {path}: cannot read: {error}")
    if not lines or not lines[0].strip():
        fail(f"--key-file {path}: empty")
    return lines[0].strip()


async def _serve(host: str, port: int, key: str) -> None:
    import socket

    from tether.proxy.http.demo import DemoUpstream

    demo = DemoUpstream(socket.create_server((host, port)), key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await demo.start()
    typer.echo(f"demo upstream API on {demo.url} (X-Api-Key expected); Ctrl-C stops it", err=True)
    await stop.wait()
    await demo.stop()
