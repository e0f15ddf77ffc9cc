"""One authenticated PostgreSQL session, sans-IO: client messages and server frames in.

:class:`Session` is fed decoded client messages (:meth:`Session.client`) and raw server
frames (:meth:`Session.server`) and answers with commands for its driver: bytes for the
server, bytes for the client, audit records, and the end of the session. It never awaits;
the driver (:mod:`tether.proxy.pg.connection`) carries out the commands *in order*, so an
:class:`AuditDecided` is committed before any later :class:`ToServer` is written, except an
``early`` one (allowed, read-only): its statement may be forwarded while it commits, and no
byte of the server's answer reaches the client before it has committed.

Enforcement (security decisions):

* **Every statement the server runs was decided first.** A ``Query`` is decided whole
  (all its statements, most restrictive, spec 5.3); a ``Parse`` is decided before the server
  sees it and again at ``Bind`` when the policy set or the search path changed since. A
  ``Bind`` names a statement this session parsed and was allowed, an ``Execute`` a portal
  it bound: anything else (statements made with SQL ``PREPARE``, cursors from ``DECLARE``)
  is refused (:mod:`tether.proxy.pg.extended`). The fast-path ``FunctionCall`` is always
  refused (it bypasses SQL), as is a replication or ``CopyBoth`` stream. Raw bytes are
  forwarded only for messages that were decoded whole (the codec's round trip makes them
  the same message).
* **What the policy saw resolves as the server resolves it.** Unqualified names are decided
  under every schema they might resolve to: the target's default schema at first; every
  schema named by a ``SET search_path`` (or ``"$user"``, or a ``RESET``) forwarded since is
  added, and at the next moment the server is idle the broker asks it for the exact list
  (``current_schemas(false)``) and uses that. A ``SET`` followed by more statements in one
  ``Query`` has each later statement decided under the old and the new schemas. So a
  transaction rollback, ``SET LOCAL`` or a savepoint can only make the set larger than the
  truth, never miss a schema.
* **Session settings that change how SQL is read are pinned.** The server is told
  ``client_encoding=UTF8`` at startup; a ``ParameterStatus`` showing another client
  encoding, or ``standard_conforming_strings`` off (backslashes in strings would then lex
  differently from what the policy parsed), ends the session before the next statement.
* **COPY** runs only as the statement the policy allowed: ``COPY ... FROM STDIN`` needs
  ``insert``, ``TO STDOUT`` ``select``, file and program forms are forbidden by the
  engine. Copy messages are forwarded only while the server is in copy-in mode, or while an
  allowed statement that may start a ``COPY ... FROM STDIN`` is in flight (a client may
  send its rows right behind the statement; the server ignores copy messages outside
  copy mode); otherwise they are dropped. **Each message forwarded gets the answer the
  broker expects**: in copy-in mode the server ignores a ``Sync`` or ``Flush`` and takes
  any other message as the end of the COPY (it fails, the message is lost), so the broker
  drops the first and fails the COPY in place of the second (:meth:`Session._in_copy`),
  and holds a message sent behind an allowed ``COPY ... FROM STDIN`` until it knows how
  the server will read it. Otherwise the queue of owed answers would be one off, and the
  broker would take later answers (statement names, refusals) for other messages'.

Refusals. A denied or approval-needing statement is answered with ``ErrorResponse`` SQLSTATE
``42501`` naming the reason and the rule. So that the server's transaction state is exactly
what a server-side error would leave, the refused message is replaced by a *sentinel* that
fails to parse on the server (``TETHER REFUSED THIS STATEMENT``: a syntax error, whatever
objects exist, :mod:`tether.proxy.pg.pending`); the server's error for it is swapped for the
refusal and its ``ReadyForQuery`` forwarded. Inside a transaction block the refusal
therefore aborts the transaction like any error (status ``E``; only ``ROLLBACK`` or
``ROLLBACK TO SAVEPOINT`` go on); in an extended-protocol pipeline the server skips to
``Sync`` and rolls back the implicit transaction, and the broker drops the client's messages
up to that ``Sync`` (the server would have ignored them). A refused simple ``Query`` outside
a transaction block with nothing in flight is answered locally, without the sentinel.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final

from tether.policy.model import Decision
from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg.commands import (
    AuditDecided,
    AuditResult,
    Command,
    End,
    Policy,
    StatementRecord,
    ToClient,
    ToServer,
    parameter_safe,
    record_for,
    refusal,
)
from tether.proxy.pg.deciding import Decider, Verdict
from tether.proxy.pg.extended import Change, Refused, Statements, fixed_denial, touches_prepared
from tether.proxy.pg.pending import (
    BIND,
    CLOSE,
    DESCRIBE,
    EXECUTE,
    INTERNAL,
    PARSE,
    PASS,
    QUERY,
    SCHEMAS_QUERY,
    SCHEMAS_SQL,
    SENTINEL_NAME,
    SENTINEL_PARSE,
    SENTINEL_QUERY,
    SENTINEL_SQL,
    SYNC,
    TERMINAL,
    Unit,
    first_error_code,
    single_text,
)

_COPY_MESSAGES: Final = (c.CopyData, c.CopyDone, c.CopyFail)
_NO_ANSWER: Final = (*_COPY_MESSAGES, c.Flush, c.Terminate)  # the server owes no answer

__all__ = [
    "SCHEMAS_SQL", "SENTINEL_NAME", "SENTINEL_SQL", "AuditDecided", "AuditResult", "Command",
    "End", "Session", "StatementRecord", "ToClient", "ToServer", "parameter_safe", "refusal",
]  # fmt: skip


class Session:
    """The state of one session between a client and its server (see the module doc)."""

    def __init__(
        self,
        policy: Policy,
        *,
        default_schema: str,
        user: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.decider = Decider(policy, default_schema=default_schema, user=user)
        self.status = be.IDLE
        self.ended = False
        self._clock = clock
        self._pending: deque[Unit] = deque()
        self._extended = Statements(policy, self.decider)
        self._skipping = False
        self._copy_in = False
        self.decider.refresh = False
        self._held: list[tuple[c.FrontendMessage, bytes]] = []
        self._refs = 0

    # --- client side ------------------------------------------------------------------------

    def client(self, message: c.FrontendMessage | c.StartupPacket, raw: bytes) -> list[Command]:
        """Commands for one message from the client."""
        out: list[Command] = []
        if self.ended:
            return out
        if isinstance(message, c.StartupMessage | c.SSLRequest | c.GSSENCRequest):
            return self._violation("a startup packet in the middle of a session")
        if isinstance(message, c.CancelRequest | c.PasswordMessage):
            return self._violation("unexpected message type in a session")
        # Not idle either while the server skips to the client's Sync after an error: it
        # would skip the broker's own query too, and the Sync would wait behind it.
        idle = (
            not self._pending
            and not self._copy_in
            and not self._skipping
            and self.status != be.FAILED_TRANSACTION
        )
        if self.decider.refresh and idle and not self._held:
            out.append(ToServer(SCHEMAS_QUERY))
            self._pending.append(Unit(INTERNAL))
            self.decider.refresh = False
        if self._held or self._holding(message):
            self._held.append((message, raw))
            return out
        self._message(message, raw, out)
        return out

    def _holding(self, message: c.FrontendMessage) -> bool:
        """Whether ``message`` must wait: behind the broker's own path query, or while an
        allowed statement in flight may yet put the server in copy-in mode. The server
        would then read the message as part of the COPY (below, :meth:`_in_copy`), not as
        the message it is, so the broker cannot know yet what answer it owes for it. It
        goes on once the server is in copy-in mode or the statement is answered. Copy
        messages (the rows a client sends right behind its ``COPY``), a ``Flush`` and a
        ``Terminate`` need no answer and never wait for a COPY (unless behind one held)."""
        pending = self._pending
        if pending and pending[0].kind == INTERNAL:  # sent only when nothing else is owed
            return True
        if self._copy_in or isinstance(message, _NO_ANSWER):
            return False
        return any(unit.copy for unit in pending)

    def _release(self, out: list[Command]) -> None:
        """Send on the held messages, in order, up to one that must still wait."""
        while self._held and not self.ended:
            message, raw = self._held[0]
            if self._holding(message):
                return
            self._held.pop(0)
            self._message(message, raw, out)

    def _in_copy(self, message: c.FrontendMessage, raw: bytes, out: list[Command]) -> None:
        """A message while the server is in copy-in mode, as PostgreSQL reads it there: copy
        messages go on (``CopyDone`` and ``CopyFail`` end the mode), a ``Sync`` or ``Flush``
        is ignored (dropped here), and any other message ends the COPY with an error that
        swallows the message. The broker drops it and fails the COPY in its place, so the
        server runs nothing the broker did not decide and owes no answer the broker does
        not expect (it would otherwise hold a unit no answer comes for, and take later
        answers, names and refusals for other messages')."""
        if isinstance(message, _COPY_MESSAGES):
            out.append(ToServer(raw))
            if not isinstance(message, c.CopyData):
                self._copy_in = False
        elif isinstance(message, c.Terminate):
            out.append(ToServer(raw))
            out.append(End("closed"))
            self.ended = True
        elif not isinstance(message, c.Sync | c.Flush):
            name = type(message).__name__
            out.append(ToServer(c.CopyFail(f"{name} message during COPY").encode()))
            self._copy_in = False

    def _message(self, message: c.FrontendMessage, raw: bytes, out: list[Command]) -> None:
        if self._copy_in:
            self._in_copy(message, raw, out)
            return
        if isinstance(message, _COPY_MESSAGES):
            if self._copy_may_start():
                out.append(ToServer(raw))
            return
        if self._skipping and not isinstance(message, c.Sync | c.Terminate):
            return
        if isinstance(message, c.Query):
            self._query(message, raw, out)
        elif isinstance(message, c.Parse):
            self._prepare(self._extended.parse(message), PARSE, raw, out)
        elif isinstance(message, c.Bind):
            self._prepare(self._extended.bind(message), BIND, raw, out)
        elif isinstance(message, c.Execute):
            self._execute(message, raw, out)
        elif isinstance(message, c.Describe):
            self._forward(DESCRIBE, raw, out)
        elif isinstance(message, c.Close):
            self._forward(CLOSE, raw, out, self._extended.close(message))
        elif isinstance(message, c.Sync):
            self._skipping = False
            self._forward(SYNC, raw, out)
        elif isinstance(message, c.Flush):
            out.append(ToServer(raw))
        elif isinstance(message, c.Terminate):
            out.append(ToServer(raw))
            out.append(End("closed"))
            self.ended = True
        else:  # FunctionCall
            denial = fixed_denial(self.policy, "the fast-path function call is refused")
            out.append(AuditDecided((record_for(denial, "fastpath"),)))
            self._refuse_simple(denial, out)

    def _copy_may_start(self) -> bool:
        """Whether the server is in copy-in mode, or an allowed statement in flight may put
        it there (:func:`~tether.proxy.pg.deciding.may_copy_in`): a client may send its rows
        right behind it, before the server's ``CopyInResponse``. The server reads them in
        order; if that statement turns out to be no COPY, or fails, it ignores copy
        messages."""
        return self._copy_in or any(unit.copy for unit in self._pending)

    def _next_ref(self) -> int:
        self._refs += 1
        return self._refs

    def _forward(
        self, kind: int, raw: bytes, out: list[Command], change: Change | None = None
    ) -> None:
        self._pending.append(Unit(kind, change=change))
        out.append(ToServer(raw))

    def _query(self, message: c.Query, raw: bytes, out: list[Command]) -> None:
        self._extended.forget_unnamed()  # a simple Query drops the unnamed statement and portal
        text = message.text
        if not text.strip(" \t\r\n;"):
            self._forward(QUERY, raw, out)  # the server answers EmptyQueryResponse
            return
        verdict = self.decider.decide(text, "simple")
        if not verdict.decision.allowed:
            out.append(AuditDecided(verdict.records))
            self._refuse_simple(verdict.decision, out)
            return
        if touches_prepared(text):  # SQL PREPARE, DEALLOCATE, DISCARD: names may change
            self._extended.forget_all()
        self._run(QUERY, verdict, raw, out)

    def _run(self, kind: int, verdict: Verdict, raw: bytes, out: list[Command]) -> None:
        """Forward an allowed statement after its decided events (early when read-only)."""
        ref = self._next_ref()
        out.append(AuditDecided(verdict.records, ref, early=verdict.read_only))
        self.decider.touch(verdict)
        self._pending.append(
            Unit(kind, verdict.records, started=self._clock(), ref=ref, copy=verdict.copy_in)
        )
        out.append(ToServer(raw))

    def _refuse_simple(self, decision: Decision, out: list[Command]) -> None:
        if not self._pending and self.status == be.IDLE:
            out.append(ToClient(refusal(decision) + be.ready(be.IDLE)))
            return
        self._pending.append(Unit(QUERY, refusal=refusal(decision)))
        out.append(ToServer(SENTINEL_QUERY))

    def _refuse_extended(self, refused: Refused, out: list[Command]) -> None:
        out.append(AuditDecided(refused.records))
        self._pending.append(Unit(PARSE, refusal=refusal(refused.decision)))
        out.append(ToServer(SENTINEL_PARSE))
        self._skipping = True

    def _prepare(
        self, checked: Refused | Change, kind: int, raw: bytes, out: list[Command]
    ) -> None:
        """Forward a ``Parse`` or ``Bind`` its check allowed, or refuse it."""
        if isinstance(checked, Refused):
            self._refuse_extended(checked, out)
        else:
            self._forward(kind, raw, out, checked)

    def _execute(self, message: c.Execute, raw: bytes, out: list[Command]) -> None:
        verdict = self._extended.execute(message)
        if isinstance(verdict, Refused):
            self._refuse_extended(verdict, out)
            return
        self._run(EXECUTE, verdict, raw, out)

    # --- server side ------------------------------------------------------------------------

    def server(self, frames: list[tuple[int, bytes, bytes]]) -> list[Command]:
        """Commands for frames from the server (raw result rows are passed through as is)."""
        out: list[Command] = []
        chunk = bytearray()
        for kind, body, raw in frames:
            if self.ended:
                break
            if kind in PASS and not (self._pending and self._pending[0].kind == INTERNAL):
                chunk += raw
                continue
            forward = self._frame(kind, body, raw, out, chunk)
            if forward is not None:
                chunk += forward
        if chunk:
            out.append(ToClient(bytes(chunk)))
        if self._held:  # after the answers before them, which the client reads first
            self._release(out)
        return out

    def _frame(
        self, kind: int, body: bytes, raw: bytes, out: list[Command], chunk: bytearray
    ) -> bytes | None:
        pending = self._pending
        unit = pending[0] if pending else None
        if unit is not None and unit.kind == INTERNAL:
            return self._internal(kind, body, raw, unit, out, chunk)
        if kind == be.T_PARAMETER_STATUS:
            return self._parameter(body, raw, out, chunk)
        if kind == be.T_ERROR:
            self._copy_in = False  # a COPY that fails ends copy-in mode
            return self._error(body, raw, out, chunk)
        if kind == be.T_READY:
            message = be.decode_backend(kind, body)
            assert isinstance(message, be.ReadyForQuery)
            self.status = message.status
            if unit is not None and unit.kind in (QUERY, SYNC):
                pending.popleft()
            self._copy_in = False
            return raw
        if kind == be.T_COPY_IN:
            self._copy_in = True
            if unit is not None and unit.kind == EXECUTE:
                # Its one statement is this COPY: once it ends, nothing of it can start
                # another, and the server sends its CommandComplete only at the client's
                # next Sync or Flush, which must not wait for it.
                unit.copy = False
            return raw
        if kind in (be.T_COPY_BOTH, be.T_AUTH, be.T_KEY_DATA, be.T_FUNCTION_RESULT):
            self._end_with(out, chunk, "protocol", "the server sent an unexpected message")
            return None
        if unit is None:
            return raw
        if unit.kind == QUERY:
            if kind in (be.T_COMMAND_COMPLETE, be.T_EMPTY_QUERY):
                self._query_result(unit, kind, body, out)
            return raw
        if kind in TERMINAL.get(unit.kind, ()):
            pending.popleft()
            if unit.kind == EXECUTE:
                self._result(unit, 0, kind, body, None, out)
        return raw

    def _query_result(self, unit: Unit, kind: int, body: bytes, out: list[Command]) -> None:
        self._result(unit, unit.index, kind, body, None, out)
        unit.index += 1

    def _result(
        self,
        unit: Unit,
        index: int,
        kind: int,
        body: bytes,
        error: str | None,
        out: list[Command],
    ) -> None:
        if index >= len(unit.records):
            return
        rows = None
        if kind == be.T_COMMAND_COMPLETE:
            message = be.decode_backend(kind, body)
            assert isinstance(message, be.CommandComplete)
            rows = message.rows
        elapsed = max(0.0, (self._clock() - unit.started) * 1000.0)
        out.append(AuditResult(unit.records[index], rows, error, elapsed, unit.ref, index))

    def _error(self, body: bytes, raw: bytes, out: list[Command], chunk: bytearray) -> bytes | None:
        pending = self._pending
        if not pending:
            return raw
        unit = pending[0]
        if unit.refusal is not None:
            replacement: bytes = unit.refusal
            if unit.kind != QUERY:  # the sentinel Parse: the server now skips to Sync
                pending.popleft()
                self._drop_to_sync(failed=False)
            return replacement
        code = first_error_code(body)
        if unit.kind == QUERY:
            self._result(unit, unit.index, be.T_ERROR, body, code, out)
            unit.index = len(unit.records)
            return raw
        if unit.kind == EXECUTE:
            self._result(unit, 0, be.T_ERROR, body, code, out)
        self._drop_to_sync(failed=True)
        return raw

    def _drop_to_sync(self, *, failed: bool) -> None:
        """After an error in the extended protocol the server skips every message up to the
        next Sync, a simple ``Query`` too: drop what it will not answer, and undo the names
        those messages set (latest first). ``failed``: the first unit is the one that failed
        (else it was skipped too)."""
        pending = self._pending
        dropped: list[Unit] = []
        while pending and pending[0].kind not in (SYNC, INTERNAL):
            dropped.append(pending.popleft())
        for index in range(len(dropped) - 1, -1, -1):
            change = dropped[index].change
            if change is not None:
                self._extended.undo(change, failed=failed and index == 0)
        if not pending or pending[0].kind != SYNC:
            # The client's Sync is still to come: until it does, the server skips what the
            # client sends, so the broker drops it too (never a name it set, never a unit
            # the server will not answer).
            self._skipping = True

    def _parameter(
        self, body: bytes, raw: bytes, out: list[Command], chunk: bytearray
    ) -> bytes | None:
        message = be.decode_backend(be.T_PARAMETER_STATUS, body)
        assert isinstance(message, be.ParameterStatus)
        if not parameter_safe(message.name, message.value):
            self._end_with(
                out, chunk, "unsafe-setting",
                f"the session's {message.name} changed to {message.value!r}, which the broker "
                "cannot check statements under",
            )  # fmt: skip
            return None
        return raw

    def _internal(
        self, kind: int, body: bytes, raw: bytes, unit: Unit, out: list[Command], chunk: bytearray
    ) -> bytes | None:
        if kind == be.T_DATA_ROW:
            value = single_text(body)
            if value is not None:
                unit.schemas.append(value)
        elif kind == be.T_PARAMETER_STATUS:  # a setting a statement before changed: checked
            return self._parameter(body, raw, out, chunk)
        elif kind == be.T_ERROR:
            self._end_with(out, chunk, "error", "the broker could not read the search path")
        elif kind == be.T_READY:
            self._pending.popleft()
            self.decider.reported(unit.schemas)  # the held messages go on (``server``)
        return None

    def _end_with(self, out: list[Command], chunk: bytearray, reason: str, text: str) -> None:
        if chunk:
            out.append(ToClient(bytes(chunk)))
            chunk.clear()
        fatal = be.error("08P01" if reason == "protocol" else "55000", text, severity="FATAL")
        out.append(End(reason, fatal.encode()))
        self.ended = True

    def _violation(self, text: str) -> list[Command]:
        self.ended = True
        return [End("protocol", be.error("08P01", text, severity="FATAL").encode())]
