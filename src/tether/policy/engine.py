"""The decision (spec section 4) over a compiled, indexed policy set.

Security-relevant structure, in the order a request meets it:

1. ``normalize`` validates the request and splits the action into parts; any
   failure is a deny carrying the failure's reason (``invalid-request``,
   ``ambiguous-path``, ``shell-construct``, ``sql-parse-error``).
2. Scope: a target outside ``scope.targets`` is denied ``out-of-scope``.
3. Candidate rules come from an index keyed by (action kind, target, agent), so
   rules that cannot apply are never looked at; the candidates are then filtered
   by subject, runtime, target and ``on_behalf_of`` once per context and cached,
   exactly (:mod:`tether.policy.context`).
4. Each part is decided on its own: candidates are ordered deny rules first,
   so a deny is always seen before any allow can return; a ``when`` that errors
   makes an allow rule miss and a deny rule hit.
5. The request gets the most restrictive decision of its parts.
6. With ``delegation``, the same parts are decided again with the user as the
   subject (human and subject-less rules); if that is not an allow, the answer is
   deny ``delegation-denied``.

``decide`` never raises: an unexpected exception anywhere is a deny
(``invalid-request``, detail "internal error") so that an engine bug fails closed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tether.policy import celexpr, request_fast
from tether.policy import request as req
from tether.policy.actions import Captures, part_keys
from tether.policy.context import Check, ContextCache, Principal, RuleIndex
from tether.policy.errors import RequestError
from tether.policy.model import (
    ALLOW,
    ALLOWED,
    APPROVAL_NEEDED,
    APPROVAL_REQUIRED,
    DEFAULT_DENY,
    DELEGATION_DENIED,
    DENIED_BY_RULE,
    DENY,
    INVALID_REQUEST,
    OUT_OF_SCOPE,
    SQL_FORBIDDEN,
    Decision,
    more_restrictive,
)
from tether.policy.names import compile_name_glob
from tether.policy.rules import AGENT, ANY, HUMAN, Rule

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PolicyTest:
    """One entry of a file's ``tests:`` list."""

    name: str
    file: str
    line: int
    request: Any
    expect: dict[str, Any]


@dataclass
class PolicySet:
    """A loaded, compiled and indexed policy set. Immutable once built; thread-safe to share."""

    version: str
    rules: tuple[Rule, ...]
    tests: tuple[PolicyTest, ...]
    files: tuple[str, ...]
    clock: Clock = field(default=_utcnow, repr=False)

    def __post_init__(self) -> None:
        self._agent_index = RuleIndex((r for r in self.rules if r.subject in (AGENT, ANY)), True)
        self._human_index = RuleIndex((r for r in self.rules if r.subject in (HUMAN, ANY)), False)
        self.by_id = {r.id: r for r in self.rules}
        self._checks = {r.index: _check(r, self.version) for r in self.rules}
        # Context -> applicable rules. The set is immutable, so entries never go stale.
        self._contexts = ContextCache({r.index: r.action.keys() for r in self.rules}, self._checks)
        self._default_deny = Decision(DENY, None, DEFAULT_DENY, None, self.version)

    def decide(self, request: object, *, default_schema: str = "public") -> Decision:
        """The decision for one spec request (any JSON value). Never raises."""
        try:
            return self._decide(request, default_schema)
        except Exception as error:  # noqa: BLE001 - an engine bug must fail closed
            return self._deny(None, INVALID_REQUEST, f"internal error: {type(error).__name__}")

    def normalize(self, request: object, *, default_schema: str = "public") -> req.Request:
        """The validated request and its parts (raises ``RequestError``)."""
        return request_fast.normalize(request, default_schema=default_schema)

    # --- internals ---------------------------------------------------------------------------

    def _deny(self, rule: str | None, reason: str, detail: str | None = None) -> Decision:
        return Decision(DENY, rule, reason, detail, self.version)

    def _decide(self, value: object, default_schema: str) -> Decision:
        try:
            request = request_fast.normalize(value, default_schema=default_schema)
        except RequestError as error:
            return self._deny(None, error.reason, error.detail)
        if request.scope_targets is not None and not _in_scope(
            request.scope_targets, request.target_name
        ):
            return self._deny(None, OUT_OF_SCOPE, f"target {request.target_name!r} is not in scope")
        agent = Principal(AGENT, request.agent_id, request.agent_labels)
        decision = self._decide_for(self._agent_index, agent, request)
        if request.delegation is None or decision.decision == DENY:
            return decision
        user = Principal(HUMAN, request.delegation.user, {}, request.delegation.groups)
        user_decision = self._decide_for(self._human_index, user, request)
        if user_decision.decision != ALLOW:
            detail = f"user {user.ident!r} is not allowed this action ({user_decision.reason})"
            rule = user_decision.rule if user_decision.decision == DENY else None
            return self._deny(rule, DELEGATION_DENIED, detail)
        return decision

    def _decide_for(self, index: RuleIndex, who: Principal, request: req.Request) -> Decision:
        rules = self._contexts.rules_for(index, who, request)
        parts = request.parts
        if len(parts) == 1:
            part = parts[0]
            return self._decide_part(rules.for_keys(part_keys(part)), part, request, None)
        evaluator = _Evaluator(request, self.clock)  # one CEL context (one clock) for all parts
        result: Decision | None = None
        for part in parts:
            decision = self._decide_part(rules.for_keys(part_keys(part)), part, request, evaluator)
            result = decision if result is None else more_restrictive(result, decision)
            if result.decision == DENY:
                break
        assert result is not None  # normalize always yields at least one part
        return result

    def _decide_part(
        self,
        checks: Iterable[Check],
        part: req.Part,
        request: req.Request,
        ev: _Evaluator | None,
    ) -> Decision:
        """The first matching check decides (they come deny first); see :data:`Check`."""
        if isinstance(part, req.SqlPart) and part.statement.forbidden is not None:
            return self._deny(None, SQL_FORBIDDEN, part.statement.forbidden)
        pending: Decision | None = None
        for block, when, approval, hit, ask in checks:
            captures = block.match(part)
            if captures is None:
                continue
            if when is not None:
                if ev is None:
                    ev = _Evaluator(request, self.clock)
                if not ev.when(when, captures, part):
                    continue
            if approval is None or approval in request.approvals:
                return hit
            if pending is None:
                pending = ask
        if pending is not None:
            return pending
        if isinstance(part, req.SqlPart) and part.statement.forbidden_functions:
            names = ", ".join(sorted(part.statement.forbidden_functions))
            return self._deny(None, SQL_FORBIDDEN, f"forbidden function(s): {names}")
        return self._default_deny

    def checks_of(self, rules: Iterable[Rule]) -> list[Check]:
        """The compiled checks of ``rules``, in the given order (for tests of the indexes)."""
        return [self._checks[r.index] for r in rules]


def _check(rule: Rule, version: str) -> Check:
    """A rule's :data:`Check`: what the decision loop needs of it, and its decisions."""
    if rule.deny:
        hit = Decision(DENY, rule.id, DENIED_BY_RULE, rule.description or None, version)
    else:
        hit = Decision(ALLOW, rule.id, ALLOWED, None, version)
    approval = rule.id if rule.approval is not None and not rule.deny else None
    ask = (
        hit
        if approval is None
        else Decision(APPROVAL_REQUIRED, rule.id, APPROVAL_NEEDED, None, version)
    )
    return (rule.action, rule if rule.when is not None else None, approval, hit, ask)


@functools.lru_cache(maxsize=4096)
def _scope_matcher(pattern: str) -> Callable[[str], bool]:
    try:
        return compile_name_glob(pattern)
    except ValueError:
        return lambda name: False


def _in_scope(patterns: Sequence[str], target: str) -> bool:
    return any(_scope_matcher(p)(target) for p in patterns)


class _Evaluator:
    """Evaluates ``when`` conditions; builds the CEL context once, on first need."""

    __slots__ = ("_base", "_clock", "_request")

    def __init__(self, request: req.Request, clock: Clock) -> None:
        self._request = request
        self._clock = clock
        self._base: dict[str, Any] | None = None

    def when(self, rule: Rule, captures: Captures, part: req.Part | None = None) -> bool:
        if rule.when is None:
            return True
        context = self._context(captures, part)
        result = rule.when.evaluate(context)
        if result is celexpr.ERROR:
            return rule.deny  # fail closed: an allow misses, a deny hits
        return bool(result)

    def _context(self, captures: Captures, part: req.Part | None = None) -> dict[str, Any]:
        """The CEL context for one part. An HTTP part made by a method or path override
        (``X-HTTP-Method-Override: DELETE``, ``X-Original-URL``) is what the target runs, so
        CEL sees its method, path and query, not the request line's: a deny rule reading
        ``request.http.method`` missed the DELETE of a POST overridden to DELETE."""
        if self._base is None:
            self._base = self._build()
        http = self._base["request"].get("http")
        if http is None:
            return self._files_context(part)
        method, path, query = http["method"], http["path"], http["query"]
        if isinstance(part, req.HttpPart):
            method, path, query = part.method, part.path.path, part.path.query
        if not captures and (method, path, query) == (http["method"], http["path"], http["query"]):
            return self._base
        view = dict(http, method=method, path=path, query=query, params=dict(captures))
        return dict(self._base, request={"http": view})

    def _files_context(self, part: req.Part | None) -> dict[str, Any]:
        """A rename is decided as a delete of its source and a write of its destination; for
        the write, CEL's ``request.files.path`` is the destination (``op`` stays ``rename``,
        ``to`` is there too): a deny rule on writes reading ``request.files.path`` saw the
        source and missed a rename into the directory it guards."""
        assert self._base is not None
        files = self._base["request"].get("files")
        if files is None or not isinstance(part, req.FilesPart) or part.path == files["path"]:
            return self._base
        return dict(self._base, request={"files": dict(files, path=part.path)})

    def _build(self) -> dict[str, Any]:
        r = self._request
        delegation: dict[str, Any] = {}
        if r.delegation is not None:
            delegation = {"user": r.delegation.user, "groups": sorted(r.delegation.groups)}
        context: dict[str, Any] = {
            "agent": {"id": r.agent_id, "labels": r.agent_labels},
            "runtime": {"id": r.runtime_id, "labels": r.runtime_labels}
            if r.runtime_id is not None
            else {},
            "delegation": delegation,
            "task": r.task,
            "target": {"name": r.target_name, "labels": r.target_labels},
            "time": _utc(r.time if r.time is not None else self._clock()),
            "request": r.cel_view(),
        }
        if r.source_ip is not None:  # absent: a condition reading it errs (spec 4: closed)
            context["source_ip"] = r.source_ip
        return context


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC. CEL reads the fields of a timestamp (``getHours()``...) in UTC unless
    given a time zone, but the ``cel`` engine reads them in the value's own offset: a ``time``
    written ``10:00:00+05:00`` (05:00 UTC) would pass a ``getHours() >= 9`` condition. A moment
    without an offset (an injected clock) is taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
