"""The node starts the broker when ``pg_proxy.enabled``, with a certificate made at first start."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

from tests.pg import free_port
from tests.test_serve import Node, start

__all__ = ["start"]


def test_node_runs_the_broker(tmp_path: Path, start: Callable[..., Node]) -> None:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "p.yaml").write_text("rules: []\n")
    port = free_port()
    (tmp_path / "tether.yaml").write_text(
        f"pg_proxy:\n  enabled: true\n  listen: 127.0.0.1:{port}\n"
    )
    node = start("--listen", "127.0.0.1:0", "--config", "tether.yaml")
    node.wait_for_log(rf"postgres broker listening on 127\.0\.0\.1:{port}", timeout=90)
    cert = tmp_path / "data" / "pg-broker.crt"
    assert (tmp_path / "data" / "pg-broker.key").stat().st_mode & 0o077 == 0
    context = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert node.stop() == 0
    assert "Traceback" not in node.stderr
