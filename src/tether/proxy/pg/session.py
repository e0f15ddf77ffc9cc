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
  is refused. The fast-path ``FunctionCall`` is always refused (it bypasses SQL), as is a
  replication or ``CopyBoth`` stream. Raw bytes are forwarded only for messages that were
  decoded whole (the codec's round trip makes them the same message).
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
  engine. ``CopyData`` is forwarded only while the server is in copy-in mode.

Refusals. A denied or approval-needing statement is answered with ``ErrorResponse``
SQLSTATE ``42501`` naming the reason and the rule. So that the server's transaction state
is exactly what a server-side error would leave, the refused message is replaced by a
*sentinel* that fails to parse on the server (``TETHER REFUSED THIS STATEMENT``: a syntax
error, whatever objects exist); the server's error for it is swapped for the refusal and
its ``ReadyForQuery`` forwarded. Inside a transaction block the refusal therefore aborts
the transaction like any error (status ``E``; only ``ROLLBACK`` or ``ROLLBACK TO
SAVEPOINT`` go on); in an extended-protocol pipeline the server skips to ``Sync`` and rolls
back the implicit transaction, and the broker drops the client's messages up to that
``Sync`` (the server would have ignored them). A refused simple ``Query`` outside a
transaction block with nothing in flight is answered locally, without the sentinel.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
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
    with_params,
)
from tether.proxy.pg.deciding import Decider, Verdict

__all__ = [
    "SCHEMAS_SQL", "SENTINEL_NAME", "SENTINEL_SQL", "AuditDecided", "AuditResult", "Command",
    "End", "Session", "StatementRecord", "ToClient", "ToServer", "parameter_safe", "refusal",
]  # fmt: skip

SENTINEL_SQL: Final = "TETHER REFUSED THIS STATEMENT"
SENTINEL_NAME: Final = "tether.refused"
SCHEMAS_SQL: Final = "SELECT pg_catalog.unnest(pg_catalog.current_schemas(false))"
_SENTINEL_QUERY: Final = c.Query(SENTINEL_SQL).encode()
_SENTINEL_PARSE: Final = c.Parse(SENTINEL_NAME, SENTINEL_SQL).encode()
_SCHEMAS_QUERY: Final = c.Query(SCHEMAS_SQL).encode()

# Unit kinds: what the server owes an answer for, in order.
QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, INTERNAL = range(8)
_TERMINAL: Final = {
    PARSE: frozenset({be.T_PARSE_COMPLETE}),
    BIND: frozenset({be.T_BIND_COMPLETE}),
    DESCRIBE: frozenset({be.T_ROW_DESCRIPTION, be.T_NO_DATA}),
    EXECUTE: frozenset({be.T_COMMAND_COMPLETE, be.T_EMPTY_QUERY, be.T_PORTAL_SUSPENDED}),
    CLOSE: frozenset({be.T_CLOSE_COMPLETE}),
}
_PASS: Final = frozenset({be.T_DATA_ROW, be.T_COPY_DATA, be.T_NOTICE, be.T_NOTIFICATION})


@dataclass(frozen=True, slots=True)
class _Prepared:
    query: str
    verdict: Verdict
    policy: object


@dataclass(slots=True)
class _Unit:
    kind: int
    records: tuple[StatementRecord, ...] = ()
    refusal: bytes | None = None
    started: float = field(default_factory=time.monotonic)
    index: int = 0
    schemas: list[str] = field(default_factory=list)
    ref: int = 0


def _first_error_code(body: bytes) -> str | None:
    message = be.decode_backend(be.T_ERROR, body)
    return message.sqlstate if isinstance(message, be.ErrorResponse) else None


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
        self._pending: deque[_Unit] = deque()
        self._statements: dict[str, _Prepared] = {}
        self._portals: dict[str, _Prepared] = {}
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
        idle = not self._pending and not self._copy_in and self.status != be.FAILED_TRANSACTION
        if self._held or (self.decider.refresh and idle):
            if not self._held:
                out.append(ToServer(_SCHEMAS_QUERY))
                self._pending.append(_Unit(INTERNAL))
                self.decider.refresh = False
            self._held.append((message, raw))
            return out
        self._message(message, raw, out)
        return out

    def _message(self, message: c.FrontendMessage, raw: bytes, out: list[Command]) -> None:
        if isinstance(message, c.CopyData | c.CopyDone | c.CopyFail):
            if self._copy_in:
                out.append(ToServer(raw))
                self._copy_in = isinstance(message, c.CopyData)
            return
        if self._skipping and not isinstance(message, c.Sync | c.Terminate):
            return
        if isinstance(message, c.Query):
            self._query(message, raw, out)
        elif isinstance(message, c.Parse):
            self._parse(message, raw, out)
        elif isinstance(message, c.Bind):
            self._bind(message, raw, out)
        elif isinstance(message, c.Execute):
            self._execute(message, raw, out)
        elif isinstance(message, c.Describe):
            self._forward(DESCRIBE, raw, out)
        elif isinstance(message, c.Close):
            target = self._statements if message.kind == "S" else self._portals
            target.pop(message.name, None)
            self._forward(CLOSE, raw, out)
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
            self._refuse_simple(self._fixed_denial("the fast-path function call is refused"), out)

    def _next_ref(self) -> int:
        self._refs += 1
        return self._refs

    def _forward(self, kind: int, raw: bytes, out: list[Command]) -> None:
        self._pending.append(_Unit(kind))
        out.append(ToServer(raw))

    def _fixed_denial(self, detail: str) -> Decision:
        version = getattr(self.policy.current(), "version", "")
        return Decision("deny", None, "sql-forbidden", detail, str(version))

    def _query(self, message: c.Query, raw: bytes, out: list[Command]) -> None:
        self._statements.pop("", None)  # a simple Query drops the unnamed statement and portal
        self._portals.pop("", None)
        text = message.text
        if not text.strip(" \t\r\n;"):
            self._forward(QUERY, raw, out)  # the server answers EmptyQueryResponse
            return
        verdict = self.decider.decide(text, "simple")
        if not verdict.decision.allowed:
            out.append(AuditDecided(verdict.records))
            self._refuse_simple(verdict.decision, out)
            return
        ref = self._next_ref()
        out.append(AuditDecided(verdict.records, ref, early=verdict.read_only))
        self.decider.touch(verdict)
        self._pending.append(_Unit(QUERY, verdict.records, started=self._clock(), ref=ref))
        out.append(ToServer(raw))

    def _refuse_simple(self, decision: Decision, out: list[Command]) -> None:
        if not self._pending and self.status == be.IDLE:
            out.append(ToClient(refusal(decision) + be.ready(be.IDLE)))
            return
        self._pending.append(_Unit(QUERY, refusal=refusal(decision)))
        out.append(ToServer(_SENTINEL_QUERY))

    def _refuse_extended(self, decision: Decision, out: list[Command]) -> None:
        self._pending.append(_Unit(PARSE, refusal=refusal(decision)))
        out.append(ToServer(_SENTINEL_PARSE))
        self._skipping = True

    def _parse(self, message: c.Parse, raw: bytes, out: list[Command]) -> None:
        verdict = self.decider.decide(message.query, "extended")
        if message.name == "":
            self._statements.pop("", None)
        if not verdict.decision.allowed:
            out.append(AuditDecided(verdict.records))
            self._refuse_extended(verdict.decision, out)
            return
        if message.name not in self._statements:  # an existing name: the server refuses it
            prepared = _Prepared(message.query, verdict, self.policy.current())
            self._statements[message.name] = prepared
        self._forward(PARSE, raw, out)

    def _bind(self, message: c.Bind, raw: bytes, out: list[Command]) -> None:
        prepared = self._statements.get(message.statement)
        if prepared is None:
            denial = self._fixed_denial(
                f"statement {message.statement!r} was not prepared through the broker"
            )
            out.append(AuditDecided((record_for(denial, "extended"),)))
            self._refuse_extended(denial, out)
            return
        policy = self.policy.current()
        if prepared.policy is not policy or prepared.verdict.schemas != self.decider.schemas:
            prepared = _Prepared(
                prepared.query, self.decider.decide(prepared.query, "extended"), policy
            )
            self._statements[message.statement] = prepared
        if not prepared.verdict.decision.allowed:  # refused now, or at an earlier Bind
            out.append(AuditDecided(prepared.verdict.records))
            self._refuse_extended(prepared.verdict.decision, out)
            return
        params = len(message.params)
        verdict = prepared.verdict
        if params:
            records = tuple(with_params(r, params) for r in verdict.records)
            verdict = Verdict(
                verdict.decision, records, verdict.schemas, verdict.paths, verdict.transaction,
                verdict.read_only,
            )  # fmt: skip
        self._portals[message.portal] = _Prepared(prepared.query, verdict, prepared.policy)
        self._forward(BIND, raw, out)

    def _execute(self, message: c.Execute, raw: bytes, out: list[Command]) -> None:
        portal = self._portals.get(message.portal)
        if portal is None:
            what = f"portal {message.portal!r} was not bound through the broker"
            denial = self._fixed_denial(what)
            out.append(AuditDecided((record_for(denial, "extended"),)))
            self._refuse_extended(denial, out)
            return
        records = portal.verdict.records
        ref = self._next_ref()
        out.append(AuditDecided(records, ref, early=portal.verdict.read_only))
        self.decider.touch(portal.verdict)
        self._pending.append(_Unit(EXECUTE, records, started=self._clock(), ref=ref))
        out.append(ToServer(raw))

    # --- deciding ---------------------------------------------------------------------------

    # --- server side ------------------------------------------------------------------------

    def server(self, frames: list[tuple[int, bytes, bytes]]) -> list[Command]:
        """Commands for frames from the server (raw result rows are passed through as is)."""
        out: list[Command] = []
        chunk = bytearray()
        for kind, body, raw in frames:
            if self.ended:
                break
            if kind in _PASS and not (self._pending and self._pending[0].kind == INTERNAL):
                chunk += raw
                continue
            forward = self._frame(kind, body, raw, out, chunk)
            if forward is not None:
                chunk += forward
        if chunk:
            out.append(ToClient(bytes(chunk)))
        return out

    def _frame(
        self, kind: int, body: bytes, raw: bytes, out: list[Command], chunk: bytearray
    ) -> bytes | None:
        pending = self._pending
        unit = pending[0] if pending else None
        if unit is not None and unit.kind == INTERNAL:
            return self._internal(kind, body, unit, out, chunk)
        if kind == be.T_PARAMETER_STATUS:
            return self._parameter(body, raw, out, chunk)
        if kind == be.T_ERROR:
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
        if kind in _TERMINAL.get(unit.kind, ()):
            pending.popleft()
            if unit.kind == EXECUTE:
                self._result(unit, 0, kind, body, None, out)
        return raw

    def _query_result(self, unit: _Unit, kind: int, body: bytes, out: list[Command]) -> None:
        self._result(unit, unit.index, kind, body, None, out)
        unit.index += 1

    def _result(
        self,
        unit: _Unit,
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
            if unit.kind != QUERY:
                pending.popleft()
            self._drop_to_sync()
            return replacement
        code = _first_error_code(body)
        if unit.kind == QUERY:
            self._result(unit, unit.index, be.T_ERROR, body, code, out)
            unit.index = len(unit.records)
            return raw
        if unit.kind == EXECUTE:
            self._result(unit, 0, be.T_ERROR, body, code, out)
        self._drop_to_sync()
        return raw

    def _drop_to_sync(self) -> None:
        """After an error the server skips to the next Sync: drop what it will not answer."""
        pending = self._pending
        while pending and pending[0].kind not in (SYNC, QUERY, INTERNAL):
            pending.popleft()

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
        self, kind: int, body: bytes, unit: _Unit, out: list[Command], chunk: bytearray
    ) -> bytes | None:
        if kind == be.T_DATA_ROW:
            value = _single_text(body)
            if value is not None:
                unit.schemas.append(value)
        elif kind == be.T_ERROR:
            self._end_with(out, chunk, "error", "the broker could not read the search path")
        elif kind == be.T_READY:
            self._pending.popleft()
            self.decider.reported(unit.schemas)
            held, self._held = self._held, []
            for message, raw in held:
                self._message(message, raw, out)
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


def _single_text(body: bytes) -> str | None:
    r = c.reader(body)
    if r.count() != 1:
        raise c.ProtocolViolation("expected one column")
    size = r.int32()
    if size < 0:
        return None
    value = r.raw(size).decode("utf-8", "strict")
    r.done()
    return value
