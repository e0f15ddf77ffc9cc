"""Which rules apply to a request's context, found through indexes and cached per context.

A *context* is everything a decision depends on except the action and ``when``: the
principal (agent or delegating user, with labels and groups), the runtime, the target and
the delegation. Security decisions:

* The indexes only ever skip rules that could not have matched. :class:`RuleIndex` files a
  rule under the keys of its target and agent selectors (or ``*`` on a side it does not
  restrict or cannot be keyed on) and a request probes every key its names and labels can
  be filed under; :func:`applies` then decides exactly. :class:`ContextRules` files the
  applicable rules by action key (:func:`~tether.policy.actions.part_keys`); a rule without
  action keys is looked at for every part.
* Rules are always visited deny first, then in file order (:func:`rule_order`), so a deny
  is seen before any allow can return.
* :class:`ContextCache` is keyed by the context's names; an entry keeps *copies* of the
  labels and groups it was built for and is used only when they are equal to the request's
  (a caller that changes its dicts afterwards cannot change a cached answer). The policy
  set is immutable, so entries never go stale; the cache is bounded (oldest out first).
* Each rule is compiled once per load into a :data:`Check`: its action block, its ``when``
  (or None), the approval it needs (or None) and the decisions it makes. The decision loop
  then reads one tuple per rule instead of the rule and two decision tables of the whole
  set. At 10,000 rules each request meets other rules, far apart in memory and no longer in
  the CPU caches, so what a decision reads per rule, more than what it computes, sets its
  cost (compiled path patterns and method sets are shared between rules for the same
  reason, see :mod:`tether.policy.actions`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tether.policy import request as req
from tether.policy.actions import ActionBlock
from tether.policy.model import Decision
from tether.policy.rules import AGENT, HUMAN, IndexKey, Rule, probe_keys

Check = tuple[ActionBlock, Rule | None, str | None, Decision, Decision]
"""``(action block, rule if it has a when, id of the approval it needs, hit, approval needed)``.

``hit`` is the decision when the rule matches (and its ``when`` holds, and it needs no
approval or has it): the rule's deny, or its allow. Deny rules never need an approval."""

_MAX_INDEX_FANOUT = 64
_CACHE_SIZE = 8192
_ANY: IndexKey = ("*",)


def rule_order(rule: Rule) -> tuple[int, int]:
    """Deny rules first, then file order."""
    return (0 if rule.deny else 1, rule.index)


@dataclass(slots=True)
class Principal:
    """Who a pass of the decision is for: the agent, or the delegating user."""

    kind: str  # AGENT | HUMAN
    ident: str
    labels: dict[str, str]
    groups: frozenset[str] = frozenset()


class RuleIndex:
    """Rules of one principal kind, bucketed by (action kind, target key, agent key)."""

    def __init__(self, rules: Iterable[Rule], use_agent_key: bool) -> None:
        buckets: dict[tuple[str, IndexKey, IndexKey], list[Rule]] = {}
        for rule in rules:
            for key in self._keys(rule, use_agent_key):
                buckets.setdefault(key, []).append(rule)
        self._buckets = {k: tuple(sorted(v, key=rule_order)) for k, v in buckets.items()}
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
        return sorted({r.index: r for b in found for r in b}.values(), key=rule_order)


class ContextRules:
    """The checks of the rules that apply to one context, filed by action key."""

    __slots__ = ("_by_key", "_checks", "_keyed", "_unkeyed")

    def __init__(
        self,
        rules: Sequence[Rule],
        keys_of: Mapping[int, frozenset[str] | None],
        checks: Mapping[int, Check],
    ) -> None:
        """``keys_of[i]`` and ``checks[i]`` are rule ``i``'s action keys and check."""
        self._checks = checks
        self._by_key: dict[tuple[str, ...], tuple[Check, ...]] = {}
        keyed: dict[str, list[Rule]] = {}
        unkeyed: list[Rule] = []
        for rule in rules:
            keys = keys_of[rule.index]
            if keys is None:
                unkeyed.append(rule)
            else:
                for key in keys:
                    keyed.setdefault(key, []).append(rule)
        self._keyed = keyed
        self._unkeyed = tuple(unkeyed)

    def for_keys(self, keys: tuple[str, ...]) -> tuple[Check, ...]:
        """The checks of the rules filed under any of ``keys`` and of the unkeyed ones."""
        found = self._by_key.get(keys)
        if found is not None:
            return found
        keyed = self._keyed
        if len(keys) == 2 and keys[1] not in keyed:  # only keys some rule is filed under:
            short = keys[:1]  # the cache stays bounded by the rules, not by the paths seen
            found = self._by_key.get(short)
            if found is not None:
                return found
            keys = short
        merged = {r.index: r for k in keys for r in keyed.get(k, ())}
        rules = sorted((*merged.values(), *self._unkeyed), key=rule_order)
        found = tuple(self._checks[r.index] for r in rules)
        if len(self._by_key) < 1024:
            self._by_key[keys] = found
        return found


@dataclass(frozen=True, slots=True)
class _Entry:
    labels: dict[str, str]
    target_labels: dict[str, str]
    runtime_labels: dict[str, str]
    groups: frozenset[str]
    delegated: frozenset[str] | None
    rules: ContextRules


class ContextCache:
    """Context -> :class:`ContextRules`, exact on a hit (see the module docstring)."""

    def __init__(
        self, keys_of: Mapping[int, frozenset[str] | None], checks: Mapping[int, Check]
    ) -> None:
        self._keys_of = keys_of
        self._checks = checks
        self._entries: dict[tuple[str | None, ...], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def rules_for(self, index: RuleIndex, who: Principal, request: req.Request) -> ContextRules:
        delegation = request.delegation
        key = (
            who.kind,
            request.kind,
            who.ident,
            request.target_name,
            request.runtime_id,
            None if delegation is None else delegation.user,
        )
        labels, target_labels = who.labels, request.target_labels
        delegated = None if delegation is None else delegation.groups
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry.target_labels == target_labels
            and entry.labels == labels
            and entry.runtime_labels == request.runtime_labels
            and entry.groups == who.groups
            and entry.delegated == delegated
        ):
            return entry.rules
        agent_key = who.ident if who.kind == AGENT else None
        found = index.candidates(
            request.kind, request.target_name, target_labels, agent_key, labels
        )
        rules = ContextRules(
            [r for r in found if applies(r, who, request)], self._keys_of, self._checks
        )
        entries = self._entries
        if len(entries) >= _CACHE_SIZE:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                del entries[next(iter(entries))]  # oldest first; a race only skips one eviction
        entries[key] = _Entry(
            dict(labels),
            dict(target_labels),
            dict(request.runtime_labels),
            who.groups,
            delegated,
            rules,
        )
        return rules


def applies(rule: Rule, who: Principal, request: req.Request) -> bool:
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
