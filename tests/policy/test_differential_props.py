"""Differential test of the decision (spec sections 1 and 4): the engine against a naive
reference written from the spec, on random policy sets and random requests.

The reference reads every rule of the set for every request: no index, no context cache, no
action keys, no precompiled decisions. It shares only the action blocks' ``match`` (tested
on their own elsewhere), the request validation and the CEL evaluation with the engine. Any
difference, and in particular a rule the indexes skipped although it applies, shows up as a
different decision, rule or reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy import PolicySet, celexpr
from tether.policy import request as req
from tether.policy.engine import _Evaluator
from tether.policy.rules import Rule

from .conftest import policies

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ["bot", "bot-2", "billing", "b", "alice", "web", "db", "sre", "*"]
GLOBS = ["bot*", "*-2", "b*", "*", "bil*ing", "x*", "*i*"]
LABEL_KEYS = ["team", "env", "tier"]
LABEL_VALUES = ["red", "blue", "prod", "dev", "1"]
TOOLS = ["read", "write", "drop", "read_all"]
TOOL_GLOBS = ["read*", "*", "dr*", "*all"]
WHENS = [
    "true",
    "false",
    'agent.labels.team == "red"',  # an error when the label is missing
    'target.labels["env"] == "prod"',
    'delegation.user == "alice"',  # an error without delegation
    "request.mcp.arguments.n > 2",  # an error without n, or with a string n
    'runtime.id.startsWith("k8s")',  # an error without a runtime
]


def _name_list(draw: st.DrawFn) -> list[str]:
    return draw(st.lists(st.sampled_from(NAMES + GLOBS), min_size=1, max_size=4, unique=True))


def _labels_selector(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(LABEL_KEYS), min_size=1, max_size=2, unique=True))
    values = st.sampled_from(LABEL_VALUES) | st.just("*")
    values |= st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2)
    return {"labels": {k: draw(values) for k in keys}}


def _selector(draw: st.DrawFn) -> Any:
    return _labels_selector(draw) if draw(st.booleans()) else _name_list(draw)


@st.composite
def rules(draw: st.DrawFn, index: int) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": f"r{index}",
        "effect": draw(st.sampled_from(["allow", "allow", "deny"])),
    }
    subject = draw(st.sampled_from(["none", "none", "agents", "agents", "users", "groups"]))
    if subject == "agents":
        rule["agents"] = _selector(draw)
    elif subject in ("users", "groups"):
        rule[subject] = _name_list(draw)
    for key in ("runtimes", "targets"):
        if draw(st.integers(0, 2)) == 0:
            rule[key] = _selector(draw)
    obo = draw(st.sampled_from(["any", "none", "users", "groups", None, None, None]))
    if obo in ("users", "groups"):
        rule["on_behalf_of"] = {obo: _name_list(draw)}
    elif obo is not None:
        rule["on_behalf_of"] = obo
    if draw(st.integers(0, 3)):
        tools = draw(st.lists(st.sampled_from(TOOLS + TOOL_GLOBS), min_size=1, max_size=3))
        rule["mcp"] = {"tools": tools}
    else:
        commands = st.sampled_from(["ls **", "rm *", "cat /x", "ls"])
        rule["ssh"] = {"commands": draw(st.lists(commands, max_size=3))}
        if not rule["ssh"]["commands"]:
            rule["ssh"] = {"shell": True}
    if draw(st.integers(0, 3)) == 0:
        rule["when"] = draw(st.sampled_from(WHENS))
    if rule["effect"] == "allow" and draw(st.integers(0, 3)) == 0:
        rule["approval"] = {"approvers": ["owner"]}
    return rule


@st.composite
def policy_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [draw(rules(i)) for i in range(draw(st.integers(3, 12)))]


LABELS = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=3)


@st.composite
def requests(draw: st.DrawFn, rule_ids: int) -> dict[str, Any]:
    value: dict[str, Any] = {
        "agent": {
            "id": draw(st.sampled_from(["bot", "bot-2", "billing", "bill-ing", "x"])),
            "labels": draw(LABELS),
        },
        "target": {"name": draw(st.sampled_from(["db", "web", "b", "x"])), "labels": draw(LABELS)},
    }
    if draw(st.booleans()):
        value["runtime"] = {"id": draw(st.sampled_from(["k8s/a", "vm"])), "labels": draw(LABELS)}
    if draw(st.integers(0, 2)) == 0:
        groups = draw(st.lists(st.sampled_from(NAMES), max_size=2))
        value["delegation"] = {"user": draw(st.sampled_from(NAMES)), "groups": groups}
    if draw(st.booleans()):
        value["approvals"] = [f"r{i}" for i in range(rule_ids) if draw(st.booleans())]
    if draw(st.integers(0, 3)):
        arguments = draw(st.sampled_from([{}, {"n": 1}, {"n": 5}, {"n": "5"}]))
        value["action"] = {"mcp": {"tool": draw(st.sampled_from(TOOLS)), "arguments": arguments}}
    else:
        command = draw(st.sampled_from(["ls", "rm a", "cat /x", "ls -l; rm a", "cat /x && ls"]))
        value["action"] = {"ssh": {"command": command} if command else {"shell": True}}
    return value


# --- the reference -----------------------------------------------------------------------------


def _glob(pattern: str, name: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name, re.DOTALL) is not None


def _names(patterns: list[str], name: str | None) -> bool:
    return name is not None and any(_glob(p, name) for p in patterns)


def _labels(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for key, want in selector.items():
        if key not in labels:
            return False
        if want == "*":
            continue
        if labels[key] not in (want if isinstance(want, list) else [want]):
            return False
    return True


def _selects(selector: Any, name: str | None, labels: Mapping[str, str]) -> bool:
    if isinstance(selector, list):
        return _names(selector, name)
    return name is not None and _labels(selector["labels"], labels)


def _subject(src: Mapping[str, Any], human: bool, who: str, groups: frozenset[str]) -> bool:
    names_humans = "users" in src or "groups" in src
    if not human:
        if names_humans:
            return False
        return "agents" not in src or _selects(src["agents"], who, _AGENT_LABELS[0])
    if "agents" in src:
        return False
    if not names_humans:
        return True
    return _names(src.get("users", []), who) or any(
        _names(src.get("groups", []), g) for g in groups
    )


_AGENT_LABELS: list[Mapping[str, str]] = [{}]


def _on_behalf_of(src: Mapping[str, Any], request: req.Request) -> bool:
    obo = src.get("on_behalf_of", "any")
    delegation = request.delegation
    if obo == "any":
        return True
    if obo == "none":
        return delegation is None
    if delegation is None:
        return False
    return _names(obo.get("users", []), delegation.user) or any(
        _names(obo.get("groups", []), g) for g in delegation.groups
    )


def _part_decision(
    ps: PolicySet, request: req.Request, part: req.Part, human: bool
) -> tuple[str, str | None, str]:
    if human:
        assert request.delegation is not None
        who, groups = request.delegation.user, request.delegation.groups
    else:
        who, groups = request.agent_id, frozenset[str]()
    evaluator = _Evaluator(request, ps.clock)
    matched: list[Rule] = []
    for rule in ps.rules:  # every rule, in file order
        src = rule.source
        if not _subject(src, human, who, groups):
            continue
        if "runtimes" in src and not _selects(
            src["runtimes"], request.runtime_id, request.runtime_labels
        ):
            continue
        if "targets" in src and not _selects(
            src["targets"], request.target_name, request.target_labels
        ):
            continue
        if not _on_behalf_of(src, request) or rule.action.match(part) is None:
            continue
        if rule.when is not None:
            result = rule.when.evaluate(evaluator._context({}))
            if not (rule.deny if result is celexpr.ERROR else result):
                continue
        matched.append(rule)
    for rule in matched:
        if rule.deny:
            return ("deny", rule.id, "denied-by-rule")
    for rule in matched:
        if rule.approval is None or rule.id in request.approvals:
            return ("allow", rule.id, "allowed")
    for rule in matched:
        return ("approval_required", rule.id, "approval-needed")
    return ("deny", None, "default-deny")


_SEVERITY = {"allow": 0, "approval_required": 1, "deny": 2}


def _pass(ps: PolicySet, request: req.Request, human: bool) -> tuple[str, str | None, str]:
    result: tuple[str, str | None, str] | None = None
    for part in request.parts:
        decision = _part_decision(ps, request, part, human)
        if result is None or _SEVERITY[decision[0]] > _SEVERITY[result[0]]:
            result = decision
    assert result is not None
    return result


def reference(ps: PolicySet, value: dict[str, Any]) -> tuple[str, str | None, str]:
    request = ps.normalize(value)
    _AGENT_LABELS[0] = request.agent_labels
    agent = _pass(ps, request, human=False)
    if request.delegation is None or agent[0] == "deny":
        return agent
    user = _pass(ps, request, human=True)
    if user[0] != "allow":
        return ("deny", user[1] if user[0] == "deny" else None, "delegation-denied")
    return agent


@SETTINGS
@given(st.data())
def test_engine_decides_like_the_naive_reference(data: st.DataObject) -> None:
    rule_list = data.draw(policy_sets())
    ps = policies(_yaml(rule_list))
    for _ in range(4):
        value = data.draw(requests(len(rule_list)))
        got = ps.decide(value)
        assert (got.decision, got.rule, got.reason) == reference(ps, value), (rule_list, value)


def _yaml(rule_list: list[dict[str, Any]]) -> str:
    # JSON is YAML: one rule per line keeps the load errors readable
    return "rules:\n" + "".join(f"  - {json.dumps(rule)}\n" for rule in rule_list)
