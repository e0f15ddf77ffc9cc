"""Interoperability: the syslog sink into a real rsyslog (Debian's ``rsyslog`` and
``rsyslog-gnutls``), over TCP and over TLS with the test CA.

rsyslog parses each octet-counted frame as RFC 5424 and writes the fields it parsed, one
message per line, with a template: if our framing, header or structured data were off, the
fields would come out wrong or the messages merged.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit_export.certs import Certs
from tests.audit_export.conftest import Trail, wait_for
from tether.audit.events import AuditEvent
from tether.audit.sinks.base import DeliveryLoop
from tether.audit.sinks.config import SyslogSinkConfig
from tether.audit.sinks.syslog import SyslogSink

TEMPLATE = """\
template(name="fields" type="list") {
  property(name="syslogfacility") constant(value="\\t")
  property(name="syslogseverity") constant(value="\\t")
  property(name="hostname") constant(value="\\t")
  property(name="app-name") constant(value="\\t")
  property(name="msgid") constant(value="\\t")
  property(name="structured-data") constant(value="\\t")
  property(name="msg" droplastlf="on") constant(value="\\n")
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Rsyslog:
    def __init__(
        self, directory: Path, certs: Certs | None, max_message_size: str | None = "256k"
    ) -> None:
        self.directory = directory
        self.out = directory / "out.log"
        self.port = _free_port()
        tls = ""
        if certs is not None:
            tls = (
                f'global(DefaultNetstreamDriverCAFile="{certs.ca}" '
                f'DefaultNetstreamDriverCertFile="{certs.server_cert}" '
                f'DefaultNetstreamDriverKeyFile="{certs.server_key}")\n'
            )
        driver = ' StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"'
        size = "" if max_message_size is None else f' maxMessageSize="{max_message_size}"'
        config = (
            f'global(workDirectory="{directory}"{size})\n{tls}'
            f'module(load="imtcp"{driver if certs else ""})\n'
            f'input(type="imtcp" port="{self.port}" address="127.0.0.1")\n{TEMPLATE}'
            f'action(type="omfile" file="{self.out}" template="fields")\n'
        )
        (directory / "rsyslog.conf").write_text(config)
        binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        command = [binary, "-n", "-f", str(directory / "rsyslog.conf"),
                   "-i", str(directory / "rsyslog.pid")]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read() if self.proc.stdout else b""
                raise RuntimeError(f"rsyslogd exited: {output!r}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsyslogd did not listen")

    def lines(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        data = self.out.read_text()
        return [line.split("\t", 6) for line in data[: data.rfind("\n") + 1].splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(params=["tcp", "tls"])
def rsyslog(request: pytest.FixtureRequest, tmp_path: Path, certs: Certs) -> Iterator[Rsyslog]:
    if shutil.which("rsyslogd") is None and not Path("/usr/sbin/rsyslogd").exists():
        pytest.fail("rsyslogd missing: apt-get install rsyslog rsyslog-gnutls", pytrace=False)
    server = Rsyslog(tmp_path, certs if request.param == "tls" else None)
    server.transport = request.param  # type: ignore[attr-defined]
    yield server
    server.stop()


async def test_rsyslog_parses_every_message(rsyslog: Rsyslog, trail: Trail, certs: Certs) -> None:
    stored = await trail.emit(40)
    transport = rsyslog.transport  # type: ignore[attr-defined]
    config = SyslogSinkConfig(
        name="rsyslog", kind="syslog", host="localhost", port=rsyslog.port,
        transport=transport, ca_file=certs.ca, hostname="node-1",
    )  # fmt: skip
    loop = DeliveryLoop(SyslogSink(config), trail.engine, batch_size=15)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait_for(lambda: len(rsyslog.lines()) >= 40, 60, "rsyslog to write 40 lines")
    finally:
        stop.set()
        await task
    lines = rsyslog.lines()
    assert len(lines) == 40
    for fields, event in zip(lines, stored, strict=True):
        facility, severity, hostname, app, msgid, sd, msg = fields
        assert (facility, hostname, app, msgid) == ("13", "node-1", "tether", event.kind)
        assert severity == ("4" if event.decision == "deny" else "6")
        assert sd.startswith(f'[tether@32473 seq="{event.seq}" id="{event.id}" ')
        ocsf = json.loads(msg)
        assert ocsf["metadata"]["uid"] == event.id and ocsf["metadata"]["sequence"] == event.seq


async def test_an_agent_sized_event_cannot_break_the_framing_of_a_default_rsyslog(
    tmp_path: Path, trail: Trail
) -> None:
    """An agent controls the size of its commands and the text of names it sends. Against
    an rsyslog with its default limits, a 300 kB command used to make a frame larger than
    rsyslog's maxFrameSize: rsyslog then split the rest of the connection on newlines, the
    following events were merged into 8 kB fragments, and a newline in a later target
    started a forged message of the agent's choosing. Now every event arrives as its own
    message, the large one shrunk to valid, marked JSON, the newline written as text."""
    forged = "web\n<13>1 2026-01-01T00:00:00Z forged tether - ssh.command - FORGED"
    events = [
        AuditEvent(kind="ssh.command", agent="bot", target="web-1", action={"command": "id"}),
        AuditEvent(kind="ssh.command", agent="bot", target="web-1",
                   action={"command": "echo " + "x" * 300_000}),
        AuditEvent(kind="ssh.command", agent="bot", target="web-1", action={"command": "ls"}),
        AuditEvent(kind="ssh.command", agent="bot", target=forged, action={"command": "w"}),
        AuditEvent(kind="ssh.command", agent="bot", target="web-1", action={"command": "pwd"}),
    ]  # fmt: skip
    stored = [await trail.log.append(event) for event in events]
    server = Rsyslog(tmp_path, None, max_message_size=None)
    config = SyslogSinkConfig(
        name="rsyslog", kind="syslog", host="127.0.0.1", port=server.port, transport="tcp",
        hostname="node-1",
    )  # fmt: skip
    loop = DeliveryLoop(SyslogSink(config), trail.engine, batch_size=10)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait_for(lambda: loop.delivered >= 5, 30, "the batch to be sent")
        await asyncio.sleep(1.0)  # rsyslog writes what it parsed
    finally:
        stop.set()
        await task
        server.stop()
    lines = server.lines()
    assert [fields[2] for fields in lines] == ["node-1"] * 5, lines
    for fields, event in zip(lines, stored, strict=True):
        sd, msg = fields[5], fields[6]
        assert sd.startswith(f'[tether@32473 seq="{event.seq}" id="{event.id}" ')
        ocsf = json.loads(msg)  # whole JSON: not cut by the receiver
        assert ocsf["metadata"]["sequence"] == event.seq
    big = json.loads(lines[1][6])
    assert big["unmapped"]["tether"]["truncated"] is True
    assert big["message"].startswith("echo xxx") and big["message"].endswith("...")
    assert 'truncated="true"' in lines[1][5]
    assert "\\x0a<13>1" in lines[3][5]
    assert json.loads(lines[3][6])["unmapped"]["tether"]["target"] == forged
