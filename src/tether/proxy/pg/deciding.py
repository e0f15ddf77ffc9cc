"""Deciding one query text for a session, and the set of schemas unqualified names may mean.

:class:`Decider` keeps the session's *schema set*: the schemas an unqualified name might
resolve to on the server right now. It starts as the target's default schema. Before a
statement that sets the search path runs (``SET search_path``, ``RESET``, ``DISCARD ALL``),
every schema it names is added (``"$user"`` is the session's user, an empty path the
target's default); the set only ever grows until the session machine replaces it with what
the server reports (``current_schemas(false)``) at an idle moment, which it asks for after
such a statement and after any transaction control once the path was touched (a rollback
or a savepoint can undo a ``SET``). A query is decided under every schema of the set, the
most restrictive decision winning, so the policy never decides under fewer schemas than
the server may use. Within one query, a ``SET`` followed by more statements has each
statement decided alone under the old and the new schemas (spec 5.3: most restrictive).

Trailing terminators (``;`` and white space at the end of the text, as pgbench and many
scripts send) are dropped before deciding: a final ``;`` is either a statement terminator,
which PostgreSQL ignores at the end, or part of a comment or of an unterminated literal or
identifier, whose meaning (or invalidity) does not change without it. Deciding on the
trimmed text lets the policy engine serve the parse from its literal-normalised cache,
which it never uses for text holding a ``;``. The server still receives the text as sent.

The decision of a one-statement text under a one-schema set is asked with its *shape*:
per statement, the facts the engine's SQL matching reads (classes, relations, functions,
forbidden functions, the always-forbidden reason), as the analysis of that very text under
that very schema found them. The session's policy may answer a shape it decided before with
the same decision (:class:`~tether.proxy.pg.policy.SessionPolicy`: only while the policy
set, the agent's labels and everything else in the request are unchanged, and never when a
rule has a ``when`` condition, which may read the text): ``SELECT ... WHERE aid = 17`` and
``... aid = 18`` are one decision, not two engine calls.

A verdict is **read-only** when the text parsed and every statement in it is of class
``select`` alone and calls no function: no write, no DDL, no ``FOR UPDATE`` lock (those add
``update``), no ``SELECT INTO`` (``ddl``), no transaction control (``COMMIT`` would make
earlier writes take effect), no ``nextval`` or other function that could change anything.
The driver may forward such a statement while its audit event commits
(:mod:`tether.proxy.pg.connection`); everything else waits for the commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tether.policy.errors import SqlParseError
from tether.policy.model import Decision, more_restrictive
from tether.policy.sql import SqlAnalysis, SqlStatement, analyze_sql
from tether.proxy.pg.commands import Policy, StatementRecord, record_for

_TERMINATORS: Final = " \t\r\n;"
_READ: Final = frozenset({"select"})


Shape = tuple[
    tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str], str | None], ...
]


def shape_of(analysis: SqlAnalysis) -> Shape:
    """What the engine's SQL matching reads of ``analysis`` (the statement texts excluded)."""
    return tuple(
        (s.classes, s.relations, s.functions, s.forbidden_functions, s.forbidden)
        for s in analysis.statements
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decided query: the decision, its audit records, and what it does to the path."""

    decision: Decision
    records: tuple[StatementRecord, ...]
    schemas: tuple[str, ...]  # the schema set it was decided under
    paths: tuple[tuple[str, ...], ...]  # search paths its statements set
    transaction: bool  # it holds transaction control (which may undo a SET)
    read_only: bool = False  # every statement a plain select calling no function
    roles: tuple[str, ...] = ()  # roles its statements set ("" = back to the login's)
    copy_in: bool = False  # it may put the server in copy-in mode (COPY ... FROM STDIN)


_COPY: Final = re.compile(r"copy(?![a-z0-9_$\x80-\U0010ffff])", re.IGNORECASE)


def may_copy_in(statement: SqlStatement) -> bool:
    """Whether ``statement`` is a ``COPY ... FROM STDIN``, the only statement that puts the
    server in copy-in mode: its text starts at its first token, the keyword ``COPY`` (no
    other statement starts so), and it is of class ``insert`` (``FROM``; the file and
    program forms are never allowed)."""
    return "insert" in statement.classes and _COPY.match(statement.text) is not None


class Decider:
    """Decisions for one session, and its schema set (see the module docstring)."""

    def __init__(self, policy: Policy, *, default_schema: str, user: str) -> None:
        self.policy = policy
        self.default_schema = default_schema
        self.user = user
        self.schemas: tuple[str, ...] = (default_schema,)
        self.path_touched = False
        self.refresh = False
        # The last search path set (None: the server's default) and the current role, whose
        # schema "$user" names: what a change of either may bring into the schema set.
        self.path_names: tuple[str, ...] | None = None
        self.role = user

    def decide(self, query: str, protocol: str) -> Verdict:
        schemas = self.schemas
        text = query.rstrip(_TERMINATORS) or query
        try:
            analysis: SqlAnalysis | None = analyze_sql(text, schemas[0])
        except SqlParseError:
            analysis = None
        parts: list[str] = [text]
        candidates = list(schemas)
        paths: tuple[tuple[str, ...], ...] = ()
        transaction = False
        read_only = False
        copy_in = False
        roles: tuple[str, ...] = ()
        if analysis is not None:
            statements = analysis.statements
            read_only = all(s.classes == _READ and not s.functions for s in statements)
            copy_in = any(may_copy_in(s) for s in statements)
            paths = tuple(s.search_path for s in statements if s.search_path is not None)
            roles = tuple(s.role for s in statements if s.role is not None)
            transaction = any("transaction" in s.classes for s in statements)
            later = [s for s in statements[:-1] if s.search_path is not None or s.role is not None]
            if later:
                parts = [s.text for s in statements]
                names, role = self.path_names, self.role
                for s in later:
                    if s.search_path is not None:
                        names = s.search_path
                        then = self._path_schemas(names, role)
                    if s.role is not None:
                        role = s.role or self.user
                        then = self._role_schemas(names, role)
                    candidates.extend(x for x in then if x not in candidates)
        decision: Decision | None = None
        if analysis is not None and len(parts) == 1 and len(candidates) == 1:
            decision = self.policy.decide(text, candidates[0], shape_of(analysis))
            parts = []
        for part in parts:
            for schema in candidates:
                verdict = self.policy.decide(part, schema)
                decision = verdict if decision is None else more_restrictive(decision, verdict)
        assert decision is not None
        records = self._records(query, analysis, decision, protocol)
        return Verdict(decision, records, schemas, paths, transaction, read_only, roles, copy_in)

    def _records(
        self,
        query: str,
        analysis: SqlAnalysis | None,
        decision: Decision,
        protocol: str,
    ) -> tuple[StatementRecord, ...]:
        if analysis is None:
            return (record_for(decision, protocol, size=len(query)),)
        statements = analysis.statements
        if len(statements) == 1:
            s = statements[0]
            record = StatementRecord(
                analysis.redacted, len(query), s.classes, s.relations, decision, protocol
            )
            return (record,)
        schema = self.schemas[0]
        return tuple(
            StatementRecord(
                analyze_sql(s.text, schema).redacted,
                len(s.text),
                s.classes,
                s.relations,
                decision,
                protocol,
            )
            for s in statements
        )

    def _path_schemas(self, path: tuple[str, ...], role: str) -> list[str]:
        """The schemas ``path`` names with ``role`` current (``()``, RESET: the server's
        default, which the target names)."""
        if not path:
            return [self.default_schema]
        return [role if name == "$user" else name for name in path]

    def _role_schemas(self, path: tuple[str, ...] | None, role: str) -> list[str]:
        """The schemas a path may resolve to once ``role`` is current: it may use schemas
        the login could not, and "$user" is its own (a path never set or RESET is the
        server's default, ``"$user", public`` unless configured otherwise)."""
        return self._path_schemas(path or ("$user", self.default_schema), role)

    def touch(self, verdict: Verdict) -> None:
        """Before a statement runs: widen the schema set if it may change the search path,
        or the role (which "$user" names, and whose schemas the path may use)."""
        if verdict.paths or verdict.roles:
            for path in verdict.paths:
                self.path_names = path
                self._widen(self._path_schemas(path, self.role))
            for role in verdict.roles:
                self.role = role or self.user
                self._widen(self._role_schemas(self.path_names, self.role))
            self.path_touched = True
            self.refresh = True
        elif self.path_touched and verdict.transaction:
            self.refresh = True

    def _widen(self, names: list[str]) -> None:
        for name in names:
            if name not in self.schemas:
                self.schemas = (*self.schemas, name)

    def reported(self, schemas: list[str]) -> None:
        """The server's answer: exactly these schemas are in the path now."""
        self.schemas = tuple(schemas) or (self.default_schema,)
