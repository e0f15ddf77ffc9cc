"""The extended query protocol's names: statements a session parsed, portals it bound.

:class:`Statements` is the session machine's (:mod:`tether.proxy.pg.session`) record of
the prepared statements and portals made through the broker, with the verdict each was
allowed under. For a ``Parse``, ``Bind`` or ``Execute`` it says whether the message may go
on (the machine then forwards it) or is :class:`Refused` (the machine audits the records
and answers with the refusal). It never sends anything itself.

Security decisions:

* **A ``Parse`` is decided before the server sees it**, and again at ``Bind`` when the
  policy set in force or the session's schema set changed since: a statement is never run
  under a decision made for other rules or other schemas. A statement refused at ``Parse``
  never reaches the server and is not recorded; one refused at a later ``Bind`` keeps its
  refusal, so every ``Bind`` of it is refused until it is decided again.
* **Only names made through the broker are used.** A ``Bind`` must name a statement this
  session parsed and was allowed, an ``Execute`` a portal it bound: anything else
  (statements made with SQL ``PREPARE``, cursors from ``DECLARE``) is refused as
  ``sql-forbidden``. A ``Close``, and a simple ``Query`` for the unnamed statement and
  portal, forget names as the server does.
* **The names follow the server's, not the client's messages.** Each forwarded ``Parse``,
  ``Bind`` or ``Close`` records what it changed (:class:`Change`); when the server fails
  it, or skips it after an earlier error up to ``Sync``, the change is undone as the server
  left it (:meth:`Statements.undo`). A ``Parse`` of a name already in use takes the new
  text (the server has it if it accepts the ``Parse``; if it refuses the duplicate, the
  old text is put back). A statement that may create or drop prepared statements in SQL
  (``PREPARE``, ``DEALLOCATE``, ``DISCARD``: :func:`touches_prepared`) makes the broker
  forget every name, so later ``Bind`` and ``Execute`` messages naming them are refused
  until they are prepared again through the broker. So the text re-decided at ``Bind`` is
  always the text the server will run.
* The number of parameters a ``Bind`` carries is recorded with each statement's audit
  record (never their values).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Final

from pglast import parser as pg_parser

from tether.policy.model import Decision
from tether.proxy.pg import codec as c
from tether.proxy.pg.commands import Policy, StatementRecord, record_for, with_params
from tether.proxy.pg.deciding import Decider, Verdict


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement or portal: its text, the verdict it has, and the policy set it was for."""

    query: str
    verdict: Verdict
    policy: object


@dataclass(frozen=True, slots=True)
class Refused:
    """A message refused: the decision the client hears, and the records to audit."""

    decision: Decision
    records: tuple[StatementRecord, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """A name a forwarded message set (``installed``, ``None``: removed), and what to put
    back if the server fails it (``on_fail``) or skips it (``on_skip``)."""

    portal: bool
    name: str
    installed: Prepared | None
    on_fail: Prepared | None
    on_skip: Prepared | None


_PREPARED_WORDS: Final = re.compile(r"prepare|deallocate|discard", re.IGNORECASE)
_PREPARED_STATEMENTS: Final = frozenset({"PrepareStmt", "DeallocateStmt", "DiscardStmt"})


def touches_prepared(query: str) -> bool:
    """Whether ``query`` has a statement that creates or drops prepared statements on the
    server (SQL ``PREPARE``, ``DEALLOCATE``, ``DISCARD``); True when in doubt (text the
    parser refuses). A cheap word search first: most queries name none of them."""
    if _PREPARED_WORDS.search(query) is None:
        return False
    try:
        tree = json.loads(pg_parser.parse_sql_json(query))
    except (pg_parser.ParseError, ValueError, RecursionError):
        return True
    return any(
        kind in _PREPARED_STATEMENTS
        for item in tree.get("stmts", ())
        for kind in item.get("stmt", {})
    )


def fixed_denial(policy: Policy, detail: str) -> Decision:
    """A ``sql-forbidden`` denial that no rule made (a protocol feature the broker refuses)."""
    version = getattr(policy.current(), "version", "")
    return Decision("deny", None, "sql-forbidden", detail, str(version))


def _unknown(policy: Policy, detail: str) -> Refused:
    denial = fixed_denial(policy, detail)
    return Refused(denial, (record_for(denial, "extended"),))


class Statements:
    """One session's prepared statements and portals (see the module docstring)."""

    def __init__(self, policy: Policy, decider: Decider) -> None:
        self.policy = policy
        self.decider = decider
        self._statements: dict[str, Prepared] = {}
        self._portals: dict[str, Prepared] = {}

    def forget_unnamed(self) -> None:
        """A simple ``Query`` drops the unnamed statement and portal."""
        self._statements.pop("", None)
        self._portals.pop("", None)

    def forget_all(self) -> None:
        """SQL may have created or dropped prepared statements (:func:`touches_prepared`):
        forget every name, so that none is used until prepared again through the broker."""
        self._statements.clear()
        self._portals.clear()

    def close(self, message: c.Close) -> Change:
        portal = message.kind == "P"
        target = self._portals if portal else self._statements
        previous = target.pop(message.name, None)
        return Change(portal, message.name, None, previous, previous)

    def undo(self, change: Change, *, failed: bool) -> None:
        """The server failed (``failed``) or skipped the message that made ``change``: put
        back what was there, unless a later message already changed the name again."""
        target = self._portals if change.portal else self._statements
        if target.get(change.name) is not change.installed:
            return
        restored = change.on_fail if failed else change.on_skip
        if restored is None:
            target.pop(change.name, None)
        else:
            target[change.name] = restored

    def parse(self, message: c.Parse) -> Refused | Change:
        """A :class:`Change` when the ``Parse`` may go on."""
        verdict = self.decider.decide(message.query, "extended")
        unnamed = message.name == ""
        names = self._statements
        previous = names.pop("", None) if unnamed else names.get(message.name)
        if not verdict.decision.allowed:
            return Refused(verdict.decision, verdict.records)
        prepared = Prepared(message.query, verdict, self.policy.current())
        self._statements[message.name] = prepared
        # A failed Parse of the unnamed statement has dropped the old one on the server; one
        # of a named statement in use is the server refusing the duplicate (the old one
        # stays). A skipped Parse changed nothing.
        return Change(False, message.name, prepared, None if unnamed else previous, previous)

    def bind(self, message: c.Bind) -> Refused | Change:
        """A :class:`Change` when the ``Bind`` may go to the server (its portal recorded)."""
        prepared = self._statements.get(message.statement)
        if prepared is None:
            what = f"statement {message.statement!r} was not prepared through the broker"
            return _unknown(self.policy, what)
        policy = self.policy.current()
        if prepared.policy is not policy or prepared.verdict.schemas != self.decider.schemas:
            prepared = Prepared(
                prepared.query, self.decider.decide(prepared.query, "extended"), policy
            )
            self._statements[message.statement] = prepared
        if not prepared.verdict.decision.allowed:  # refused now, or at an earlier Bind
            return Refused(prepared.verdict.decision, prepared.verdict.records)
        params = len(message.params)
        verdict = prepared.verdict
        if params:
            records = tuple(with_params(r, params) for r in verdict.records)
            verdict = replace(verdict, records=records)
        previous = self._portals.get(message.portal)
        bound = Prepared(prepared.query, verdict, prepared.policy)
        self._portals[message.portal] = bound
        return Change(True, message.portal, bound, None, previous)

    def execute(self, message: c.Execute) -> Verdict | Refused:
        """The verdict of the portal the ``Execute`` runs, or a refusal for an unknown one."""
        portal = self._portals.get(message.portal)
        if portal is None:
            return _unknown(
                self.policy, f"portal {message.portal!r} was not bound through the broker"
            )
        if touches_prepared(portal.query):
            self.forget_all()
        return portal.verdict
