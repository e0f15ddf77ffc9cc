"""What the server owes a session an answer for, and the statements the broker sends itself.

The session machine (:mod:`tether.proxy.pg.session`) keeps a queue of :class:`Unit`: one per
message the server will answer (a ``Query``, each extended-protocol message, a ``Sync``, and
the broker's own search-path query), in the order sent. :data:`TERMINAL` says which server
message ends each kind; :data:`PASS` the messages relayed to the client without a look
(result rows, copy data, notices) unless the answer is for the broker itself.

Security decisions:

* **The sentinel** (:data:`SENTINEL_SQL`, ``TETHER REFUSED THIS STATEMENT``) is what the
  server receives in place of a refused statement: it is a syntax error whatever objects
  exist, so the server runs nothing for it and is left in exactly the state a server-side
  error leaves; its error is swapped for the refusal (:attr:`Unit.refusal`).
* **The search-path query** (:data:`SCHEMAS_SQL`, schema-qualified, ``current_schemas``)
  is the broker's own (kind :data:`INTERNAL`): no byte of its answer reaches the client,
  and an answer that is not one column per row is a protocol violation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import fields
from tether.proxy.pg.commands import StatementRecord
from tether.proxy.pg.extended import Change

SENTINEL_SQL: Final = "TETHER REFUSED THIS STATEMENT"
SENTINEL_NAME: Final = "tether.refused"
SCHEMAS_SQL: Final = "SELECT pg_catalog.unnest(pg_catalog.current_schemas(false))"
SENTINEL_QUERY: Final = c.Query(SENTINEL_SQL).encode()
SENTINEL_PARSE: Final = c.Parse(SENTINEL_NAME, SENTINEL_SQL).encode()
SCHEMAS_QUERY: Final = c.Query(SCHEMAS_SQL).encode()

# Unit kinds: what the server owes an answer for, in order.
QUERY, PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, INTERNAL = range(8)
TERMINAL: Final = {
    PARSE: frozenset({be.T_PARSE_COMPLETE}),
    BIND: frozenset({be.T_BIND_COMPLETE}),
    DESCRIBE: frozenset({be.T_ROW_DESCRIPTION, be.T_NO_DATA}),
    EXECUTE: frozenset({be.T_COMMAND_COMPLETE, be.T_EMPTY_QUERY, be.T_PORTAL_SUSPENDED}),
    CLOSE: frozenset({be.T_CLOSE_COMPLETE}),
}
PASS: Final = frozenset({be.T_DATA_ROW, be.T_COPY_DATA, be.T_NOTICE, be.T_NOTIFICATION})


@dataclass(slots=True)
class Unit:
    """One answer owed: its kind, the statements it audits, and a refusal to answer with."""

    kind: int
    records: tuple[StatementRecord, ...] = ()
    refusal: bytes | None = None
    started: float = field(default_factory=time.monotonic)
    index: int = 0
    schemas: list[str] = field(default_factory=list)
    ref: int = 0
    change: Change | None = None  # the statement or portal name a Parse, Bind, Close set
    copy: bool = False  # an allowed statement that may start a COPY ... FROM STDIN


def first_error_code(body: bytes) -> str | None:
    """The SQLSTATE of an ``ErrorResponse`` body."""
    message = be.decode_backend(be.T_ERROR, body)
    return message.sqlstate if isinstance(message, be.ErrorResponse) else None


def single_text(body: bytes) -> str | None:
    """The one text column of a ``DataRow`` body (``None`` for NULL); strict."""
    r = fields.reader(body)
    if r.count() != 1:
        raise fields.ProtocolViolation("expected one column")
    size = r.int32()
    if size < 0:
        return None
    value = r.raw(size).decode("utf-8", "strict")
    r.done()
    return value
