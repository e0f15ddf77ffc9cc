"""The decision (spec section 4) over a compiled, indexed policy set.

Security-relevant structure, in the order a request meets it:

1. ``normalize`` validates the request and splits the action into parts; any
   failure is a deny carrying the failure's reason (``invalid-request``,
   ``ambiguous-path``, ``shell-construct``, ``sql-parse-error``).
2. Scope: a target outside ``scope.targets`` is denied ``out-of-scope``.
3. Candidate rules come from an index keyed by (action kind, exact target
   name, exact agent id), so rules that cannot apply are never looked at; the
   candidates are then filtered by subject, runtime, target and
   ``on_behalf_of`` once per request.
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

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tether.policy import celexpr, request_fast
from tether.policy import request as req
from tether.policy.actions import Captures, part_keys
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
from tether.policy.rules import AGENT, ANY, HUMAN, IndexKey, Rule, probe_keys

Clock = Callable[[], datetime]
_MAX_INDEX_FANOUT = 64
_CANDIDATE_CACHE_SIZE = 8192


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


@dataclass(slots=True)
class _Principal:
    """Who a pass of the decision is for: the agent, or the delegating user."""

    kind: str  # AGENT | HUMAN
    ident: str
    labels: dict[str, str]
    groups: frozenset[str] = frozenset()


def _rule_order(rule: Rule) -> tuple[int, int]:
    return (0 if rule.deny else 1, rule.index)


_ANY: IndexKey = ("*",)


class _Index:
    """Rules of one principal kind, bucketed by (action kind, target key, agent key).

    A rule is filed under the keys of its target selector and of its agent selector
    (:meth:`Selector.index_keys`: exact names, glob heads, one label), or under ``*`` on a
    side it does not restrict or cannot be keyed on. A request probes the keys its target
    and agent can be filed under, so the only rules ever looked at are those whose target
    and agent *might* match; :func:`_applies` then decides exactly.
    """

    def __init__(self, rules: Iterable[Rule], use_agent_key: bool) -> None:
        buckets: dict[tuple[str, IndexKey, IndexKey], list[Rule]] = {}
        for rule in rules:
            for key in self._keys(rule, use_agent_key):
                buckets.setdefault(key, []).append(rule)
        self._buckets = {k: tuple(sorted(v, key=_rule_order)) for k, v in buckets.items()}
        self._target_keys = {k[1] for k in buckets}
        self._agent_keys = {k[2] for k in buckets}
        self._target_heads = sorted({len(k[1][1]) for k in buckets if k[1][0] == "^"})
        self._agent_heads = sorted({len(k[2][1]) for k in buckets if k[2][0] == "^"})

    @staticmethod
    def _keys(rule: Rule, use_agent_key: bool) -> list[tuple[str, IndexKey, IndexKey]]:
        targets = rule.targets.index_keys() if rule.targets is not None else None
        agents = rule.agents.index_keys() if use_agent_key and rule.agents is not None else None
        target_keys = sorted(targets) if targets else [_ANY]
        agent_keys = sorted(agents) if agents else [_ANY]
        if len(target_keys) * len(agent_keys) > _MAX_INDEX_FANOUT:
            agent_keys = [_ANY]
            if len(target_keys) > _MAX_INDEX_FANOUT:
                target_keys = [_ANY]
        return [(rule.kind, t, a) for t in target_keys for a in agent_keys]

    def candidates(
        self,
        kind: str,
        target: str,
        target_labels: Mapping[str, str],
        agent: str | None,
        agent_labels: Mapping[str, str],
    ) -> Sequence[Rule]:
        known_t, known_a = self._target_keys, self._agent_keys
        tprobes = [k for k in probe_keys(target, target_labels, self._target_heads) if k in known_t]
        tprobes.append(_ANY)
        aprobes = [_ANY]
        if agent is not None:
            aprobes.extend(
                k for k in probe_keys(agent, agent_labels, self._agent_heads) if k in known_a
            )
        get = self._buckets.get
        found = [b for t in tprobes for a in aprobes if (b := get((kind, t, a)))]
        if not found:
            return ()
        if len(found) == 1:
            return found[0]
        return sorted({r.index: r for b in found for r in b}.values(), key=_rule_order)


class _Candidates:
    """The rules that apply to one (principal, runtime, target, delegation) context.

    Filtered once by everything but the action and ``when``, then indexed by action key
    (first path segments, command name, tool name, file op, statement class; see
    :func:`~tether.policy.actions.part_keys`), merged per probe on first use.
    """

    __slots__ = ("_by_key", "_keyed", "_unkeyed", "rules")

    def __init__(self, rules: Sequence[Rule], keys_of: Mapping[int, frozenset[str] | None]) -> None:
        """``keys_of[rule.index]`` is ``rule.action.keys()``, computed once per load."""
        self.rules = tuple(rules)
        self._by_key: dict[tuple[str, ...], tuple[Rule, ...]] = {}
        keyed: dict[str, list[Rule]] = {}
        unkeyed: list[Rule] = []
        for rule in self.rules:
            keys = keys_of[rule.index]
            if keys is None:
                unkeyed.append(rule)
            else:
                for key in keys:
                    keyed.setdefault(key, []).append(rule)
        self._keyed = keyed
        self._unkeyed = tuple(unkeyed)

    def for_keys(self, keys: tuple[str, ...]) -> Sequence[Rule]:
        """The rules filed under any of ``keys`` and the unkeyed ones, deny first."""
        keyed = self._keyed
        if len(keys) == 2 and keys[1] not in keyed:  # only keys some rule is filed under:
            keys = keys[:1]  # the cache key stays bounded by the rules, not by the paths seen
        found = self._by_key.get(keys)
        if found is None:
            merged = {r.index: r for k in keys for r in keyed.get(k, ())}
            found = (
                tuple(sorted((*merged.values(), *self._unkeyed), key=_rule_order))
                if merged
                else self._unkeyed
            )
            if len(self._by_key) < 1024:
                self._by_key[keys] = found
        return found


@dataclass(frozen=True, slots=True)
class _Context:
    """A candidate-cache entry: the context's labels and groups, and its applicable rules."""

    labels: dict[str, str]
    target_labels: dict[str, str]
    runtime_labels: dict[str, str]
    groups: frozenset[str]
    delegated: frozenset[str] | None
    candidates: _Candidates


@dataclass
class PolicySet:
    """A loaded, compiled and indexed policy set. Immutable once built; thread-safe to share."""

    version: str
    rules: tuple[Rule, ...]
    tests: tuple[PolicyTest, ...]
    files: tuple[str, ...]
    clock: Clock = field(default=_utcnow, repr=False)

    def __post_init__(self) -> None:
        self._agent_index = _Index((r for r in self.rules if r.subject in (AGENT, ANY)), True)
        self._human_index = _Index((r for r in self.rules if r.subject in (HUMAN, ANY)), False)
        self.by_id = {r.id: r for r in self.rules}
        self._action_keys = {r.index: r.action.keys() for r in self.rules}
        # Context -> applicable rules. The set is immutable, so entries never go stale.
        self._candidate_cache: dict[tuple[str | None, ...], _Context] = {}
        # The decisions a rule can make are values: built once, not per request.
        v = self.version
        self._allow = {r.id: Decision(ALLOW, r.id, ALLOWED, None, v) for r in self.rules}
        self._approval = {r.id: Decision(APPROVAL_REQUIRED, r.id, APPROVAL_NEEDED, None, v)
                          for r in self.rules if r.approval is not None}  # fmt: skip
        self._denied = {r.id: Decision(DENY, r.id, DENIED_BY_RULE, r.description or None, v)
                        for r in self.rules if r.deny}  # fmt: skip
        self._default_deny = Decision(DENY, None, DEFAULT_DENY, None, v)

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
        agent = _Principal(AGENT, request.agent_id, request.agent_labels)
        decision = self._decide_for(self._agent_index, agent, request)
        if request.delegation is None or decision.decision == DENY:
            return decision
        user = _Principal(HUMAN, request.delegation.user, {}, request.delegation.groups)
        user_decision = self._decide_for(self._human_index, user, request)
        if user_decision.decision != ALLOW:
            detail = f"user {user.ident!r} is not allowed this action ({user_decision.reason})"
            rule = user_decision.rule if user_decision.decision == DENY else None
            return self._deny(rule, DELEGATION_DENIED, detail)
        return decision

    def _candidates(self, index: _Index, who: _Principal, request: req.Request) -> _Candidates:
        """The rules that apply to the request's context, cached per context.

        The cache is keyed by the context's names; the labels and groups are stored with the
        entry (copies: the caller owns the request's dicts) and compared in full on a hit, so
        a hit is exact and labels in another order still hit.
        """
        delegation = request.delegation
        key = (
            who.kind,
            request.kind,
            who.ident,
            request.target_name,
            request.runtime_id,
            None if delegation is None else delegation.user,
        )
        labels, target_labels, runtime_labels = (
            who.labels,
            request.target_labels,
            request.runtime_labels,
        )
        delegated = None if delegation is None else delegation.groups
        entry = self._candidate_cache.get(key)
        if (
            entry is not None
            and entry.target_labels == target_labels
            and entry.labels == labels
            and entry.runtime_labels == runtime_labels
            and entry.groups == who.groups
            and entry.delegated == delegated
        ):
            return entry.candidates
        agent_key = who.ident if who.kind == AGENT else None
        found = _Candidates(
            [
                r
                for r in index.candidates(
                    request.kind, request.target_name, target_labels, agent_key, labels
                )
                if _applies(r, who, request)
            ],
            self._action_keys,
        )
        cache = self._candidate_cache
        if len(cache) >= _CANDIDATE_CACHE_SIZE:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                del cache[next(iter(cache))]  # oldest first; a race only skips one eviction
        cache[key] = _Context(
            dict(labels), dict(target_labels), dict(runtime_labels), who.groups, delegated, found
        )
        return found

    def _decide_for(self, index: _Index, who: _Principal, request: req.Request) -> Decision:
        candidates = self._candidates(index, who, request)
        evaluator = _Evaluator(request, self.clock)
        parts = request.parts
        if len(parts) == 1:
            part = parts[0]
            return self._decide_part(candidates.for_keys(part_keys(part)), part, request, evaluator)
        result: Decision | None = None
        for part in parts:
            rules = candidates.for_keys(part_keys(part))
            decision = self._decide_part(rules, part, request, evaluator)
            result = decision if result is None else more_restrictive(result, decision)
            if result.decision == DENY:
                break
        assert result is not None  # normalize always yields at least one part
        return result

    def _decide_part(
        self, candidates: Sequence[Rule], part: req.Part, request: req.Request, ev: _Evaluator
    ) -> Decision:
        if isinstance(part, req.SqlPart) and part.statement.forbidden is not None:
            return self._deny(None, SQL_FORBIDDEN, part.statement.forbidden)
        pending: Rule | None = None
        for rule in candidates:
            captures = rule.action.match(part)
            if captures is None or (rule.when is not None and not ev.when(rule, captures)):
                continue
            if rule.deny:
                return self._denied[rule.id]
            if rule.approval is None or rule.id in request.approvals:
                return self._allow[rule.id]
            pending = pending or rule
        if pending is not None:
            return self._approval[pending.id]
        if isinstance(part, req.SqlPart) and part.statement.forbidden_functions:
            names = ", ".join(sorted(part.statement.forbidden_functions))
            return self._deny(None, SQL_FORBIDDEN, f"forbidden function(s): {names}")
        return self._default_deny


def _applies(rule: Rule, who: _Principal, request: req.Request) -> bool:
    """Subject, runtime, target and on_behalf_of: everything but the action and ``when``."""
    if who.kind == AGENT:
        if rule.agents is not None and not rule.agents(who.ident, who.labels):
            return False
    elif rule.subject == HUMAN:
        user_hit = rule.users is not None and rule.users(who.ident)
        group_hit = rule.groups is not None and any(rule.groups(g) for g in who.groups)
        if not (user_hit or group_hit):
            return False
    if rule.runtimes is not None and not rule.runtimes(request.runtime_id, request.runtime_labels):
        return False
    if rule.targets is not None and not rule.targets(request.target_name, request.target_labels):
        return False
    return _on_behalf_of(rule, request)


def _on_behalf_of(rule: Rule, request: req.Request) -> bool:
    obo = rule.on_behalf_of
    if obo.mode == "any":
        return True
    delegation = request.delegation
    if obo.mode == "none":
        return delegation is None
    if delegation is None:
        return False
    if obo.users is not None and obo.users(delegation.user):
        return True
    return obo.groups is not None and any(obo.groups(g) for g in delegation.groups)


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

    def when(self, rule: Rule, captures: Captures) -> bool:
        if rule.when is None:
            return True
        context = self._context(captures)
        result = rule.when.evaluate(context)
        if result is celexpr.ERROR:
            return rule.deny  # fail closed: an allow misses, a deny hits
        return bool(result)

    def _context(self, captures: Captures) -> dict[str, Any]:
        if self._base is None:
            self._base = self._build()
        if not captures or "http" not in self._base["request"]:
            return self._base
        http = dict(self._base["request"]["http"], params=dict(captures))
        return dict(self._base, request={"http": http})

    def _build(self) -> dict[str, Any]:
        r = self._request
        delegation: dict[str, Any] = {}
        if r.delegation is not None:
            delegation = {"user": r.delegation.user, "groups": sorted(r.delegation.groups)}
        return {
            "agent": {"id": r.agent_id, "labels": r.agent_labels},
            "runtime": {"id": r.runtime_id, "labels": r.runtime_labels}
            if r.runtime_id is not None
            else {},
            "delegation": delegation,
            "task": r.task,
            "target": {"name": r.target_name, "labels": r.target_labels},
            "source_ip": r.source_ip,
            "time": r.time if r.time is not None else self._clock(),
            "request": r.cel_view(),
        }
