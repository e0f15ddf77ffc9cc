"""The asyncio driver of one logged-in session: moves bytes, runs the machine's commands.

Three tasks per session: the client reader, the server reader and the watcher. Each reader
feeds its side's decoder and hands whole messages to the :class:`~tether.proxy.pg.session.Session`,
then carries out the commands in order: an ``AuditDecided`` is awaited (committed) before
the next ``ToServer`` or ``ToClient`` is written (DESIGN invariant 5), with one exception
below; ``AuditResult`` s are
gathered and appended in batches in the background (:mod:`tether.proxy.pg.audit`), the last
batch before ``session.end``. The watcher re-checks the
credential every :data:`LIVE_CHECK_SECONDS` (revocation, agent disabled) and ends the session
at its deadline (the token's expiry, or a dynamic role's ``VALID UNTIL``).

**Read-only statements are forwarded while their event commits.** When every
``AuditDecided`` of a batch (the commands of one read from the client) is ``early``
(allowed, every statement a plain ``select`` calling no function:
:class:`~tether.proxy.pg.deciding.Verdict`) and the batch answers the client nothing itself,
the statements are written to the server first and their events committed while the server
runs them. The server reader holds a *gate* meanwhile: it reads no further server message
into the session, and so writes no byte of any answer to the client, until the commit
succeeded; if it failed the session ends (``FATAL``) and the answer is never delivered. So
the agent still sees no effect of a statement before its committed event (invariant 5), the
statement the server runs is still exactly the one decided, and a statement's latency is
the longer of the commit and the query instead of their sum. A statement of any other class
(a write, DDL, transaction control, a ``select`` calling a function, which might write) is
still committed before it is forwarded. The client reader awaits the commit before reading
on, so the events of one session stay in statement order.

Failing closed: a protocol violation from either side, an audit append that fails, a
revocation or an error in a task ends the session with a ``FATAL`` ``ErrorResponse``; the
first reason to end wins and is what ``session.end`` records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

from tether.audit.log import AuditUnavailable
from tether.identity.errors import CredentialError
from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import framing
from tether.proxy.pg.audit import BATCH, SessionAudit, result_entry
from tether.proxy.pg.session import (
    AuditDecided,
    AuditResult,
    Command,
    End,
    Session,
    ToClient,
    ToServer,
)
from tether.proxy.pg.upstream import Upstream

log = logging.getLogger(__name__)

LIVE_CHECK_SECONDS: Final = 0.25
READ_SIZE: Final = 256 * 1024
BATCH_SECONDS: Final = 1.0
MAX_REMEMBERED: Final = 1024


class Pump:
    """One session's byte pump (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        audit: SessionAudit,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        decoder: framing.FrontendDecoder,
        upstream: Upstream,
        *,
        check_live: Callable[[], Awaitable[None]],
        deadline: float,
        refresh: Callable[[], Awaitable[None]] | None = None,
        before: Callable[[object], Awaitable[None] | None] | None = None,
    ) -> None:
        self.session = session
        self.before = before  # async work before the machine sees a message (approvals)
        self.audit = audit
        self.client_reader, self.client_writer = client
        self.decoder = decoder
        self.upstream = upstream
        self.check_live = check_live
        self.deadline = deadline
        self.refresh = refresh
        self.reason: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._results: set[asyncio.Task[None]] = set()
        self._batch: list[dict[str, Any]] = []
        self._batch_since = 0.0
        self._seqs: OrderedDict[int, list[int]] = OrderedDict()
        self._done = asyncio.Event()
        self._gate: asyncio.Future[bool] | None = None  # early events committing

    async def run(self) -> str:
        """Pump until the session ends; the reason it ended."""
        tasks = [
            asyncio.create_task(self._client_loop()),
            asyncio.create_task(self._server_loop()),
            asyncio.create_task(self._watch()),
        ]
        try:
            await self._done.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._flush()
            if self._results:
                await asyncio.gather(*self._results, return_exceptions=True)
            self.upstream.close()
            with contextlib.suppress(OSError, RuntimeError):
                await asyncio.wait_for(self.client_writer.drain(), 5)
            self.client_writer.close()
        return self.reason or "closed"

    def end(self, reason: str, message: bytes | None = None) -> None:
        """End the session (the first reason wins), telling the client ``message``."""
        if self.reason is None:
            self.reason = reason
            self.session.ended = True
            if message is not None and not self.client_writer.is_closing():
                self.client_writer.write(message)
        self._done.set()

    async def _client_loop(self) -> None:
        try:
            while True:
                data = await self.client_reader.read(READ_SIZE)
                if not data:
                    self.end("client-closed")
                    return
                self.bytes_in += len(data)
                commands: list[Command] = []
                for message, raw in self.decoder.feed(data):
                    if self.before is not None:
                        work = self.before(message)
                        if work is not None:
                            await work
                    commands += self.session.client(message, raw)
                await self._run(commands)
                if self.reason is not None:
                    return
        except c.ProtocolViolation as error:
            fatal = be.error("08P01", str(error), severity="FATAL").encode()
            self.end("protocol", fatal)
        except (OSError, ConnectionError):
            self.end("client-closed")
        except AuditUnavailable:
            self.end("audit-unavailable", _fatal("the audit trail is unavailable"))
        except Exception:
            log.exception("postgres session failed")
            self.end("error", _fatal("internal error in the broker"))

    async def _server_loop(self) -> None:
        upstream = self.upstream
        try:
            if upstream.leftover:
                await self._run(self.session.server(upstream.leftover))
            while True:
                data = await upstream.reader.read(READ_SIZE)
                if not data:
                    self.end("server-closed")
                    return
                gate = self._gate
                if gate is not None and not await asyncio.shield(gate):
                    return  # the early events did not commit: the session is ending
                frames = upstream.framer.feed(data)
                if frames:
                    commands = self.session.server(frames)
                    if len(commands) == 1 and type(commands[0]) is ToClient:
                        self._to_client(commands[0].data)  # the common case: rows only
                        await self.client_writer.drain()
                    else:
                        await self._run(commands)
                if self.reason is not None:
                    return
        except c.ProtocolViolation:
            self.end("protocol", _fatal("the target sent an invalid message"))
        except (OSError, ConnectionError):
            self.end("server-closed")
        except AuditUnavailable:
            self.end("audit-unavailable", _fatal("the audit trail is unavailable"))
        except Exception:
            log.exception("postgres session failed")
            self.end("error", _fatal("internal error in the broker"))

    async def _watch(self) -> None:
        try:
            while True:
                await asyncio.sleep(LIVE_CHECK_SECONDS)
                if time.time() >= self.deadline:
                    self.end("expired", _fatal("the session's credential expired", "28000"))
                    return
                await self.check_live()
                if self._batch and time.monotonic() - self._batch_since >= BATCH_SECONDS:
                    self._flush()
                if self.refresh is not None:
                    await self.refresh()
        except CredentialError as error:
            log.info("ending postgres session: %s", error)
            self.end("revoked", _fatal("the agent's credential was revoked", "28000"))
        except Exception:
            log.exception("postgres session watcher failed")
            self.end("error", _fatal("internal error in the broker"))

    def _to_client(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.client_writer.write(data)

    async def _run(self, commands: list[Command]) -> None:
        """Carry out ``commands`` in order. Bytes are gathered and written once at the end
        (or before an ``End``), after every audit event of the batch committed: a statement
        is never written before its ``AuditDecided`` committed. The ``AuditDecided`` s of one
        batch (a pipelining client's messages read at once) are appended together, so they
        share one group commit instead of waiting for one commit each."""
        if _early(commands):
            await self._run_early(commands)
            return
        to_server, to_client = bytearray(), bytearray()
        decided: list[AuditDecided] = []
        for command in commands:
            if isinstance(command, ToServer):
                to_server += command.data
            elif isinstance(command, ToClient):
                to_client += command.data
            elif isinstance(command, AuditDecided):
                decided.append(command)
            elif isinstance(command, AuditResult):
                if decided:  # its decided event must be numbered first
                    await self._decided(decided)
                self._result(command)
            elif isinstance(command, End):
                if decided:
                    await self._decided(decided)
                self._write(to_server, to_client)
                if command.reason == "closed":
                    with contextlib.suppress(OSError, RuntimeError):
                        await self.upstream.writer.drain()
                self.end(command.reason, command.message)
                return
        if decided:
            await self._decided(decided)
        self._write(to_server, to_client)
        await self.upstream.writer.drain()
        await self.client_writer.drain()

    async def _run_early(self, commands: list[Command]) -> None:
        """A batch of ``ToServer`` and early ``AuditDecided`` only: forward the statements,
        then commit their events while the gate holds back the server's answers."""
        decided = [command for command in commands if isinstance(command, AuditDecided)]
        data = b"".join(command.data for command in commands if isinstance(command, ToServer))
        gate: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._gate = gate
        committed = False
        try:
            self.upstream.writer.write(data)
            await self._decided(decided)
            committed = True
        finally:
            if self._gate is gate:
                self._gate = None
            gate.set_result(committed)
        await self.upstream.writer.drain()

    async def _decided(self, decided: list[AuditDecided]) -> None:
        """Commit the events of ``decided`` (emptied), all at once; raises
        :class:`AuditUnavailable` if any of them did not commit."""
        batch = decided[:]
        decided.clear()
        if len(batch) == 1:
            results = [await self.audit.decided(batch[0].records)]
        else:
            results = await self.audit.decided_many([d.records for d in batch])
        for command, seqs in zip(batch, results, strict=True):
            if command.ref:
                self._remember(command.ref, seqs)

    def _write(self, to_server: bytearray, to_client: bytearray) -> None:
        if to_server:
            self.upstream.writer.write(bytes(to_server))
        if to_client:
            self._to_client(bytes(to_client))

    def _remember(self, ref: int, seqs: list[int]) -> None:
        self._seqs[ref] = seqs
        if len(self._seqs) > MAX_REMEMBERED:
            self._seqs.popitem(last=False)

    def _result(self, result: AuditResult) -> None:
        seqs = self._seqs.get(result.ref, [])
        seq = seqs[result.index] if result.index < len(seqs) else None
        entry = result_entry(seq, result.record, result.rows, result.duration_ms, result.error)
        if not self._batch:
            self._batch_since = time.monotonic()
        self._batch.append(entry)
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """Append the gathered results as one event, in the background."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        task = asyncio.create_task(self._completed(batch))
        self._results.add(task)
        task.add_done_callback(self._results.discard)

    async def _completed(self, batch: list[dict[str, Any]]) -> None:
        try:
            await self.audit.completed(batch)
        except AuditUnavailable:
            self.end("audit-unavailable", _fatal("the audit trail is unavailable"))


def _early(commands: list[Command]) -> bool:
    """Whether ``commands`` are statements to forward and early events only (at least one)."""
    early = False
    for command in commands:
        if type(command) is AuditDecided:
            if not command.early:
                return False
            early = True
        elif type(command) is not ToServer:
            return False
    return early


def _fatal(message: str, sqlstate: str = "57P01") -> bytes:
    return be.error(sqlstate, message, severity="FATAL").encode()
