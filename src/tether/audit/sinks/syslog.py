"""The syslog sink: RFC 5424 messages, RFC 6587 octet-counting frames, over TCP or TLS.

The message format is :mod:`.rfc5424`; this module holds the connection. One connection is
kept open and reused; it is dropped on any error and opened again at the next batch.

What acknowledgement means here: syslog over TCP has no application-level
acknowledgement (RELP has one; RFC 6587 does not). A batch counts as delivered once all of
its bytes were accepted by the connection (``drain``, with no write buffer left in this
process: see :meth:`SyslogSink._open`) while the receiver had not closed it. Before each
batch the sink checks that the receiver has not closed the connection (a receiver that
stopped sends FIN, seen as end of stream) and reconnects if it has, so a batch is not
written into a connection that is already dead, and after a TLS handshake it waits for a
TLS 1.3 receiver's verdict on its client certificate (see
:meth:`SyslogSink._await_verdict`). What the receiver had accepted but not yet processed
when it crashed is lost: choose a receiver that queues to
disk (rsyslog with a disk-assisted queue) or the HEC sink with ``use_ack`` where that
matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

from tether.audit.events import AuditEvent
from tether.audit.ocsf import to_ocsf
from tether.audit.sinks import rfc5424
from tether.audit.sinks.base import SinkError
from tether.audit.sinks.config import SyslogSinkConfig
from tether.audit.sinks.tls import client_context


class SyslogSink:
    """Sends batches to one syslog receiver."""

    def __init__(self, config: SyslogSinkConfig) -> None:
        self.name = config.name
        self.config = config
        self.hostname = config.hostname or socket.gethostname()
        self.procid = str(os.getpid())
        self._tls: ssl.SSLContext | None = None
        if config.transport == "tls":
            self._tls = client_context(config.ca_file, config.cert_file, config.key_file)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tcp: asyncio.WriteTransport | None = None  # under TLS, the transport below it
        self.connects = 0  # connections opened, for tests and logs

    def message(self, event: AuditEvent) -> bytes:
        """The RFC 5424 message of one event (unframed), at most ``max_message_bytes``
        octets: a larger event is shrunk and marked (:func:`rfc5424.shrink_ocsf`)."""
        ocsf = to_ocsf(event)
        params: dict[str, str | int | None] = {
            "seq": event.seq,
            "id": event.id,
            "agent": event.agent,
            "decision": event.decision,
            "session": event.session_id,
            "target": event.target,
        }
        message = self._format(event, ocsf, params, rfc5424.ocsf_message(ocsf))
        limit = self.config.max_message_bytes
        if len(message) <= limit:
            return message
        params["truncated"] = "true"
        bare = self._format(event, ocsf, params, "")
        text = rfc5424.shrink_ocsf(ocsf, limit - len(bare) - 1)
        return self._format(event, ocsf, params, text)

    def frames(self, events: Sequence[AuditEvent]) -> bytes:
        """The batch as octet-counted frames."""
        return b"".join(rfc5424.frame(self.message(event)) for event in events)

    def _format(
        self,
        event: AuditEvent,
        ocsf: dict[str, Any],
        params: dict[str, str | int | None],
        msg: str,
    ) -> bytes:
        return rfc5424.format_message(
            facility=self.config.facility,
            severity=rfc5424.SYSLOG_SEVERITY.get(ocsf["severity_id"], 5),
            time=event.time,
            hostname=self.hostname,
            app_name=self.config.app_name,
            procid=self.procid,
            msgid=event.kind,
            sd=rfc5424.structured_data(self.config.sd_id, params),
            msg=msg,
        )

    async def deliver(self, events: Sequence[AuditEvent]) -> None:
        # Built in a thread: a batch of large events (mapped, dumped, shrunk) is CPU work
        # the node's event loop, which decides and audits agents' actions, must not wait on.
        data = await asyncio.to_thread(self.frames, events)
        writer = await self._connection()
        try:
            writer.write(data)
            await asyncio.wait_for(self._sent(writer), self.config.timeout)
        except (OSError, TimeoutError) as error:
            await self._drop()
            raise SinkError(f"syslog {self._peer()}: send failed: {_reason(error)}") from None

    async def close(self) -> None:
        await self._drop()

    async def _sent(self, writer: asyncio.StreamWriter) -> None:
        """Wait until every byte written left this process (see :meth:`_open`). Under TLS
        ``drain`` sees the TLS buffer only; the TCP transport below it may still hold the
        last records, so it is watched too (no event tells when it empties)."""
        await writer.drain()
        tcp = self._tcp
        while tcp is not None and tcp.get_write_buffer_size() > 0 and not tcp.is_closing():
            await asyncio.sleep(0.01)
        if tcp is not None and tcp.is_closing():
            raise ConnectionResetError("the connection was lost")

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._alive():
            await self._drop()
        if self._writer is None:
            self._reader, self._writer = await self._connect()
            self.connects += 1
        return self._writer

    def _alive(self) -> bool:
        assert self._reader is not None and self._writer is not None
        reader = self._reader
        return not (reader.at_eof() or reader.exception() or self._writer.is_closing())

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        config = self.config
        server_name = (config.server_name or config.host) if self._tls is not None else None
        started = time.monotonic()
        opened: list[asyncio.StreamWriter] = []
        try:
            reader, writer = await asyncio.wait_for(self._open(server_name, opened), config.timeout)
        except (OSError, TimeoutError, ssl.SSLError) as error:
            for writer in opened:  # a TLS handshake that failed or timed out
                writer.close()
            raise SinkError(f"syslog {self._peer()}: cannot connect: {_reason(error)}") from None
        if self._tls is not None:
            await self._await_verdict(reader, writer, time.monotonic() - started)
        return reader, writer

    async def _open(
        self, server_name: str | None, opened: list[asyncio.StreamWriter]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect, and make ``drain`` wait for every byte to leave the process.

        asyncio's ``drain`` returns while up to 64 KiB (its high-water mark) are still in the
        transport's buffer, and does not wait at all below it: with a receiver slow to read,
        a whole batch could sit in this process when ``deliver`` returned, the cursor moved
        past it, and a ``SIGKILL`` lost it. With both buffers' limits at their least (the TCP
        one, and the TLS one above it), ``drain`` returns once the kernel holds all of it.
        """
        reader, writer = await asyncio.open_connection(self.config.host, self.config.port)
        opened.append(writer)
        writer.transport.set_write_buffer_limits(high=0)
        self._tcp = writer.transport
        if self._tls is not None:
            await writer.start_tls(self._tls, server_hostname=server_name)
            # The TLS transport pauses at size >= high (the TCP one at size > high): at 0 it
            # would stay paused with nothing left to send.
            writer.transport.set_write_buffer_limits(high=1, low=0)
        return reader, writer

    async def _await_verdict(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handshake: float
    ) -> None:
        """Wait for a TLS 1.3 server to refuse our client certificate, if it is going to.

        In TLS 1.3 the client's handshake completes before the server has checked the
        client's certificate; a refusal arrives as an alert one round trip later. Writing
        at once would put the first batch into a connection the receiver drops, and the
        batch would be lost. So after connecting, the sink reads for twice the handshake's
        duration (at least 50 ms, at most 2 s): an alert or a close there is a refusal.
        """
        wait = min(2.0, max(0.05, 2 * handshake))
        try:
            data = await asyncio.wait_for(reader.read(1), wait)
        except TimeoutError:
            return  # nothing said: accepted
        except (OSError, ssl.SSLError) as error:
            writer.close()
            raise SinkError(f"syslog {self._peer()}: refused: {_reason(error)}") from None
        if not data:
            writer.close()
            raise SinkError(f"syslog {self._peer()}: refused: closed after the handshake")

    async def _drop(self) -> None:
        writer, self._reader, self._writer, self._tcp = self._writer, None, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 2)

    def _peer(self) -> str:
        return f"{self.config.transport}://{self.config.host}:{self.config.port}"


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
