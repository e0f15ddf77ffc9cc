"""Compiling one rule (spec section 1) from its YAML mapping.

Every check that can fail happens here, once per load, and raises a
:class:`~tether.policy.errors.PolicyLoadError` naming the file, the rule id and
the line of the offending key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from tether.policy.actions import COMPILERS, ActionBlock, BlockError
from tether.policy.celexpr import Condition
from tether.policy.errors import PatternError, PolicyLoadError
from tether.policy.names import LabelSelector, NameSet
from tether.policy.yamlsrc import Node

RULE_KEYS: Final = (
    "id", "description", "effect", "agents", "users", "groups", "runtimes", "on_behalf_of",
    "targets", "http", "ssh", "sql", "mcp", "files", "when", "approval",
)  # fmt: skip
APPROVAL_KEYS: Final = ("approvers", "valid_for", "scope", "count", "allow_self", "bind_body")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}")
_APPROVER = re.compile(r"(group|user):[^\s:]+|owner")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")

AGENT: Final = "agent"
HUMAN: Final = "human"
ANY: Final = "any"


@dataclass(frozen=True, slots=True)
class Selector:
    """A list of names/globs, or ``{labels: {...}}``; None on a rule means any."""

    names: NameSet | None
    labels: LabelSelector | None

    def __call__(self, ident: str | None, labels: Mapping[str, str]) -> bool:
        if ident is None:
            return False
        if self.names is not None:
            return self.names(ident)
        return self.labels is not None and self.labels(labels)

    @property
    def exact_names(self) -> frozenset[str] | None:
        """The exact names when the selector is only exact names (used for indexing)."""
        if self.names is not None and not self.names.globs:
            return self.names.exact
        return None

    def index_keys(self) -> frozenset[IndexKey] | None:
        """Keys such that whatever this selector matches probes at least one of them
        (see :func:`probe_keys`); None when no such small set exists.

        Exact names give ``("=", name)``, a glob with a literal head ``("^", head)``, a
        label selector its first label: ``("l", key, value)`` per accepted value, or
        ``("h", key)`` when any value is accepted.
        """
        if self.names is not None:
            keys: set[IndexKey] = {("=", name) for name in self.names.exact}
            for glob in self.names.globs:
                head = glob.split("*", 1)[0]
                if not head:
                    return None
                keys.add(("^", head))
            return frozenset(keys)
        if self.labels is not None and self.labels.required:
            key, values = self.labels.required[0]
            if values is None:
                return frozenset({("h", key)})
            return frozenset(("l", key, value) for value in values)
        return None


IndexKey = tuple[str, ...]


def probe_keys(
    ident: str | None, labels: Mapping[str, str], head_lengths: Iterable[int]
) -> list[IndexKey]:
    """The index keys an identity can be filed under (the counterpart of ``index_keys``)."""
    keys: list[IndexKey] = []
    if ident is not None:
        keys.append(("=", ident))
        keys.extend(("^", ident[:n]) for n in head_lengths if n <= len(ident))
    for key, value in labels.items():
        keys.append(("l", key, value))
        keys.append(("h", key))
    return keys


@dataclass(frozen=True, slots=True)
class OnBehalfOf:
    mode: str  # "any" | "none" | "some"
    users: NameSet | None = None
    groups: NameSet | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    approvers: tuple[str, ...]
    valid_for: timedelta
    scope: str = "action"  # "action": the grant covers the approved action; "rule": the rule
    count: int = 1  # distinct approvals required
    allow_self: bool = False  # the delegating user / the agent's owner may approve too
    bind_body: bool = False  # HTTP: the approved action includes the body's SHA-256


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    index: int
    file: str
    line: int
    description: str
    deny: bool
    subject: str  # AGENT | HUMAN | ANY
    agents: Selector | None
    users: NameSet | None
    groups: NameSet | None
    runtimes: Selector | None
    on_behalf_of: OnBehalfOf
    targets: Selector | None
    kind: str
    action: ActionBlock
    when: Condition | None
    approval: Approval | None
    source: Mapping[str, Any]

    @property
    def effect(self) -> str:
        return "deny" if self.deny else "allow"


class _Where:
    """Raises load errors that name this rule's file, id and lines."""

    def __init__(self, file: str, node: Node, rule_id: str | None) -> None:
        self.file, self.node, self.rule_id = file, node, rule_id

    def error(self, key: str | None, message: str, node: Node | None = None) -> PolicyLoadError:
        node = node if node is not None else self.node
        line = node.line_of(key) if key is not None else node.line
        return PolicyLoadError(message, file=self.file, rule=self.rule_id, line=line)


def compile_rule(node: object, file: str, index: int, line: int) -> Rule:
    if not isinstance(node, Node):
        raise PolicyLoadError("each rule must be a mapping", file=file, line=line)
    rule_id = node.get("id")
    where = _Where(file, node, rule_id if isinstance(rule_id, str) else None)
    if not isinstance(rule_id, str) or not _ID.fullmatch(rule_id):
        raise where.error("id", "a rule needs an 'id': letters, digits and . _ : / @ - (≤200)")
    for key in node:
        if key not in RULE_KEYS:
            raise where.error(key, f"unknown key {key!r} (expected one of: {', '.join(RULE_KEYS)})")
    deny = _effect(node, where)
    kind, action = _action(node, where, deny)
    subject = _subject_kind(node, where)
    return Rule(
        id=rule_id,
        index=index,
        file=file,
        line=node.line,
        description=_optional_text(node, "description", where),
        deny=deny,
        subject=subject,
        agents=_selector(node, "agents", where),
        users=_names(node, "users", where),
        groups=_names(node, "groups", where),
        runtimes=_selector(node, "runtimes", where),
        on_behalf_of=_on_behalf_of(node, where),
        targets=_selector(node, "targets", where),
        kind=kind,
        action=action,
        when=_when(node, where),
        approval=_approval(node, where, deny),
        source=node,
    )


def _effect(node: Node, where: _Where) -> bool:
    effect: object = node.get("effect")
    if effect not in ("allow", "deny"):
        raise where.error("effect" if "effect" in node else None, "'effect' must be allow or deny")
    return effect == "deny"


def _action(node: Node, where: _Where, deny: bool) -> tuple[str, ActionBlock]:
    kinds = [k for k in COMPILERS if k in node]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        raise where.error(
            kinds[1] if len(kinds) > 1 else None,
            f"a rule needs exactly one action block of http, ssh, sql, mcp, files (found {found})",
        )
    kind = kinds[0]
    body = node[kind]
    if not isinstance(body, Node):
        raise where.error(kind, f"{kind!r} must be a mapping")
    try:
        return kind, COMPILERS[kind](body, deny)
    except BlockError as error:
        raise where.error(error.key, f"{kind}: {error}", body) from None
    except PatternError as error:
        raise where.error(kind, f"{kind}: {error}") from None


def _subject_kind(node: Node, where: _Where) -> str:
    human = "users" in node or "groups" in node
    if "agents" in node and human:
        raise where.error("agents", "a rule names agents or humans (users/groups), not both")
    if human:
        return HUMAN
    return AGENT if "agents" in node else ANY


def _selector(node: Node, key: str, where: _Where) -> Selector | None:
    if key not in node:
        return None
    value = node[key]
    try:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return Selector(NameSet.compile(value), None)
        if (
            isinstance(value, Node)
            and set(value) == {"labels"}
            and isinstance(value["labels"], Mapping)
        ):
            return Selector(None, LabelSelector.compile(value["labels"]))
    except PatternError as error:
        raise where.error(key, f"{key}: {error}") from None
    raise where.error(key, f"{key!r} must be a non-empty list of names or {{labels: {{...}}}}")


def _names(node: Node, key: str, where: _Where) -> NameSet | None:
    if key not in node:
        return None
    value = node[key]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise where.error(key, f"{key!r} must be a non-empty list of names")
    try:
        return NameSet.compile(value)
    except PatternError as error:
        raise where.error(key, f"{key}: {error}") from None


def _on_behalf_of(node: Node, where: _Where) -> OnBehalfOf:
    value = node.get("on_behalf_of", "any")
    if value in ("any", "none"):
        return OnBehalfOf(value)
    if isinstance(value, Node) and value and set(value) <= {"users", "groups"}:
        return OnBehalfOf("some", _names(value, "users", where), _names(value, "groups", where))
    raise where.error("on_behalf_of", "'on_behalf_of' must be any, none or {users, groups}")


def _when(node: Node, where: _Where) -> Condition | None:
    if "when" not in node:
        return None
    try:
        return Condition.compile(node["when"])
    except PatternError as error:
        raise where.error("when", f"when: {error}") from None


def _approval(node: Node, where: _Where, deny: bool) -> Approval | None:
    if "approval" not in node:  # present but empty (null) is a bad type, never "no approval"
        return None
    value = node.get("approval")
    if deny:
        raise where.error("approval", "'approval' is only allowed on allow rules")
    if not isinstance(value, Node):
        raise where.error("approval", "'approval' must be a mapping")
    for key in value:
        if key not in APPROVAL_KEYS:
            raise where.error(key, f"approval: unknown key {key!r}", value)
    approvers = value.get("approvers")
    if (
        not isinstance(approvers, list)
        or not approvers
        or not all(isinstance(a, str) and _APPROVER.fullmatch(a) for a in approvers)
    ):
        raise where.error(
            "approvers", "approval.approvers: a list of group:NAME, user:NAME or owner", value
        )
    valid_for = parse_duration(value.get("valid_for", "1h"))
    if valid_for is None:
        raise where.error("valid_for", "approval.valid_for: a duration like 30m, 1h, 2d", value)
    return Approval(tuple(approvers), valid_for, *_approval_options(value, where))


def _approval_options(value: Node, where: _Where) -> tuple[str, int, bool, bool]:
    scope, count = value.get("scope", "action"), value.get("count", 1)
    if scope not in ("action", "rule"):
        raise where.error("scope", "approval.scope: action or rule", value)
    if type(count) is not int or not 1 <= count <= 20:
        raise where.error("count", "approval.count: a number of approvals from 1 to 20", value)
    flags = []
    for key in ("allow_self", "bind_body"):
        flag = value.get(key, False)
        if type(flag) is not bool:
            raise where.error(key, f"approval.{key}: true or false", value)
        flags.append(flag)
    return scope, count, flags[0], flags[1]


def _optional_text(node: Node, key: str, where: _Where) -> str:
    value = node.get(key, "")
    if not isinstance(value, str):
        raise where.error(key, f"{key!r} must be a string")
    return value


def parse_duration(value: object) -> timedelta | None:
    """``90s``, ``30m``, ``1h30m``, ``2d``; None when not a positive duration."""
    if not isinstance(value, str) or not value:
        return None
    match = _DURATION.fullmatch(value)
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    return total if total > timedelta(0) else None
