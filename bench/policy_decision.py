"""Policy decision latency: Tether's engine against cedarpy, measured in the same run.

Run: ``.venv/bin/python bench/policy_decision.py [--json] [--quick] [--seed N]``
(``make bench``). See ``bench/README.md`` for what each figure means.

For each size (10, 1,000 and 10,000 rules) the benchmark generates, from a fixed
seed, one policy set per action kind (HTTP, SSH, SQL) over a synthetic estate of
about N/10 targets and up to 300 agents, in teams. Rules mix exact names, globs,
label selectors, subject-less rules, deny rules, ``when`` conditions and approvals,
in the proportions of :data:`SHAPES`, so the engine's index (action kind, exact
target, exact agent) is exercised the way a real policy directory would exercise it:
most rules are keyed, some are only keyed on one side, a few are keyed on neither.

The HTTP set is also written in Cedar (one policy per rule, see :func:`cedar_policy`)
and evaluated with cedarpy on pre-parsed ``PolicySet`` and ``Entities`` handles. The
translation is exact for the requests generated here (canonical paths, no trailing
slash), so the two engines must agree on allow/deny; the agreement rate is printed.

Every latency is one ``decide`` call on a request dict, timed with
``time.perf_counter_ns`` (GC off while timing, warmed up first). The figures are
ratios against baselines measured in the same run; nothing here gates CI, and the
exit status is 0 unless the engine raised.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import cedarpy

from tether.policy import PolicySet, PolicySource, load_policies

SEED = 20_260_129
SIZES = (10, 1_000, 10_000)
RULES_PER_FILE = 500
POOL = 2_000  # distinct requests per measurement, cycled through

TEAMS = (
    "billing", "payments", "search", "ledger", "growth", "infra", "identity", "catalog",
    "shipping", "fraud", "support", "media", "maps", "ads", "risk", "crm", "hr", "data",
    "mobile", "web", "ml", "sec", "ops", "legal", "tax",
)  # fmt: skip

# (agent side, target side, weight per mille). "exact" sides are what the index keys on.
SHAPES = (
    ("exact", "exact", 615),
    ("glob", "exact", 100),
    ("labels", "exact", 60),
    ("any", "exact", 60),
    ("exact", "glob", 100),
    ("exact", "labels", 55),
    ("labels", "glob", 5),  # team-wide rule: keyed on neither side
    ("any", "labels", 5),  # org-wide guardrail: keyed on neither side
)
DENY_SHARE = 0.15
WHEN_SHARE = 0.03
APPROVAL_SHARE = 0.02

Json = dict[str, Any]


def _weighted(rng: random.Random, choices: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _quote(text: str) -> str:
    return json.dumps(text)  # a Cedar string literal (our texts hold no escapes Cedar lacks)


# --- the estate: teams, agents, targets --------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    ident: str
    team: str
    labels: dict[str, str]


@dataclass
class Estate:
    teams: tuple[str, ...]
    agents: dict[str, list[Entity]]
    targets: dict[str, list[Entity]]
    all_agents: list[Entity] = field(default_factory=list)
    all_targets: list[Entity] = field(default_factory=list)


def make_estate(n_rules: int, rng: random.Random) -> Estate:
    """About N/10 targets and N/30 agents (≥4, ≤300), spread over √agents teams."""
    n_agents = min(300, max(4, n_rules // 30))
    n_targets = max(2, n_rules // 10)
    teams = TEAMS[: min(len(TEAMS), max(2, round(math.sqrt(n_agents))))]
    estate = Estate(teams, {t: [] for t in teams}, {t: [] for t in teams})
    for i in range(n_agents):
        team = teams[i % len(teams)]
        env = rng.choice(("prod", "prod", "staging"))
        agent = Entity(f"{team}-bot-{i // len(teams)}", team, {"team": team, "env": env})
        estate.agents[team].append(agent)
        estate.all_agents.append(agent)
    for i in range(n_targets):
        team = teams[i % len(teams)]
        labels = {
            "team": team,
            "env": rng.choice(("prod", "prod", "staging", "dev")),
            "pci": rng.choice(("true", "false", "false", "false")),
        }
        target = Entity(f"{team}-svc-{i // len(teams)}", team, labels)
        estate.targets[team].append(target)
        estate.all_targets.append(target)
    return estate


# --- rule subjects and targets, with their Cedar form -----------------------------------------


@dataclass
class Side:
    """One side (agents or targets) of a rule: YAML value, Cedar form, who matches."""

    yaml: Any  # None: the key is absent (any)
    scope: str  # Cedar scope clause, e.g. 'principal == Agent::"x"'
    conditions: list[str]
    pool: list[Entity]


def _label_condition(var: str, key: str, values: Sequence[str]) -> str:
    if len(values) == 1:
        return f"({var}.labels has {key} && {var}.labels.{key} == {_quote(values[0])})"
    listed = ", ".join(_quote(v) for v in values)
    return f"({var}.labels has {key} && [{listed}].contains({var}.labels.{key}))"


def _labels_side(var: str, labels: dict[str, list[str]], pool: list[Entity]) -> Side:
    matching = [e for e in pool if all(e.labels.get(k) in v for k, v in labels.items())]
    yaml_labels = {k: v[0] if len(v) == 1 else v for k, v in labels.items()}
    conditions = [_label_condition(var, k, v) for k, v in labels.items()]
    return Side({"labels": yaml_labels}, var, conditions, matching)


def _exact_side(var: str, entity_type: str, chosen: list[Entity]) -> Side:
    names = [e.ident for e in chosen]
    if len(names) == 1:
        return Side(names, f"{var} == {entity_type}::{_quote(names[0])}", [], chosen)
    listed = ", ".join(f"{entity_type}::{_quote(n)}" for n in names)
    return Side(names, var, [f"{var} in [{listed}]"], chosen)


def _glob_side(var: str, prefix: str, pool: list[Entity]) -> Side:
    glob = prefix + "*"
    matching = [e for e in pool if e.ident.startswith(prefix)]
    return Side([glob], var, [f"{var}.name like {_quote(glob)}"], matching)


def agent_side(shape: str, team: str, estate: Estate, rng: random.Random) -> Side:
    agents = estate.agents[team]
    if shape == "exact":
        chosen = rng.sample(agents, min(len(agents), rng.choice((1, 1, 1, 2, 3))))
        return _exact_side("principal", "Agent", chosen)
    if shape == "glob":
        return _glob_side("principal", f"{team}-bot-", agents)
    if shape == "labels":
        labels = {"team": [team]} if rng.random() < 0.5 else {"team": [team], "env": ["prod"]}
        return _labels_side("principal", labels, estate.all_agents)
    return Side(None, "principal", [], estate.all_agents)


def target_side(shape: str, team: str, estate: Estate, rng: random.Random) -> Side:
    targets = estate.targets[team]
    if shape == "exact":
        chosen = rng.sample(targets, min(len(targets), rng.choice((1, 1, 2))))
        return _exact_side("resource", "Target", chosen)
    if shape == "glob":
        prefix = f"{team}-svc-1" if rng.random() < 0.6 else f"{team}-"
        return _glob_side("resource", prefix, targets)
    if rng.random() < 0.5:  # keyed agent on a team's prod/staging targets
        labels = {"team": [team], "env": ["prod", "staging"]}
    else:  # org-wide: every PCI target, or every prod target
        labels = rng.choice(({"pci": ["true"]}, {"env": ["prod"]}))
    return _labels_side("resource", labels, estate.all_targets)


# --- action blocks ----------------------------------------------------------------------------

RESOURCES = (
    "invoices", "customers", "orders", "payments", "refunds", "reports", "users", "accounts",
    "jobs", "deployments", "metrics", "events", "tickets", "products", "subscriptions", "exports",
)  # fmt: skip
SUBS = ("items", "lines", "notes", "history", "status", "attachments")
ALLOW_PATHS = (
    "/v1/{res}",
    "/v1/{res}/{id}",
    "/v1/{res}/{id}/{sub}",
    "/v1/{res}/*/{sub}/**",
    "/v2/{res}/**",
    "/v1/{res}/inv-*",
    "/v1/{res}/{id}/{sub}/{sub_id}",
)
DENY_PATHS = ("/admin/**", "/internal/**", "/v1/{res}/*/delete", "/v1/{res}/{id}/export/**")
ALLOW_METHODS = (
    (["GET"], 35), (["GET", "HEAD"], 25), (["POST"], 12), (["PUT", "PATCH"], 8),
    (["DELETE"], 5), (["GET", "POST"], 10), (["*"], 5),
)  # fmt: skip
DENY_METHODS = ((["*"], 50), (["DELETE"], 25), (["POST", "PUT", "PATCH", "DELETE"], 25))
ANY_METHOD = ("GET", "GET", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

# CEL `when` → Cedar, for an allow rule and for a deny rule (a CEL error denies: 4).
HTTP_WHENS = (
    (
        'task.purpose == "incident-response"',
        '(context.task has purpose && context.task.purpose == "incident-response")',
        '(!(context.task has purpose) || context.task.purpose == "incident-response")',
    ),
    (
        'request.http.query.contains("dry_run=true")',
        '(context.query like "*dry_run=true*")',
        '(context.query like "*dry_run=true*")',
    ),
    (
        'agent.labels.env == "prod"',
        '(principal.labels has env && principal.labels.env == "prod")',
        '(!(principal.labels has env) || principal.labels.env == "prod")',
    ),
)


def _fill_path(pattern: str, res: str, rng: random.Random) -> str:
    return pattern.replace("{res}", res).replace("{sub}", rng.choice(SUBS))


def cedar_path(pattern: str) -> str:
    """A Tether path pattern as a Cedar condition on ``context.path/depth/seg``.

    Exact for canonical paths without a trailing slash (all the requests made here):
    with the depth fixed, each ``*`` of ``like`` can only match within a segment.
    A trailing ``**`` after a wildcard segment pins the segments one by one instead.
    """
    segments = pattern[1:].split("/")
    tail = segments[-1] == "**"
    if tail:
        segments = segments[:-1]
    depth = len(segments)
    globbed = ["*" if s.startswith("{") else s for s in segments]
    exact = f'(context.depth == {depth} && context.path like "/{"/".join(globbed)}")'
    if not tail:
        return exact
    if "*" not in "".join(globbed):
        below = f'context.path like "/{"/".join(globbed)}/*"'
    else:
        pins = [
            f"context.seg.s{i} {'like' if '*' in s else '=='} {_quote(s)}"
            for i, s in enumerate(globbed)
            if s != "*"
        ]
        below = " && ".join(pins)
    return f"({exact} || (context.depth > {depth} && {below}))"


def http_block(deny: bool, rng: random.Random) -> tuple[Json, str, Callable[[], Json]]:
    """The ``http`` block, its Cedar condition, and a maker of a matching request action."""
    methods = _weighted(rng, DENY_METHODS if deny else ALLOW_METHODS)
    res = rng.choice(RESOURCES)
    vocab = DENY_PATHS if deny else ALLOW_PATHS
    paths = [_fill_path(p, res, rng) for p in rng.sample(vocab, rng.choice((1, 1, 2, 3)))]
    path_cond = " || ".join(cedar_path(p) for p in paths)
    cond = path_cond if len(paths) == 1 else f"({path_cond})"

    def make() -> Json:
        method = rng.choice(ANY_METHOD) if methods == ["*"] else rng.choice(methods)
        return {"http": {"method": method, "path": instantiate_path(rng.choice(paths), rng)}}

    return {"methods": methods, "paths": paths}, cond, make


def instantiate_path(pattern: str, rng: random.Random) -> str:
    out = []
    for segment in pattern[1:].split("/"):
        if segment == "**":
            out += rng.sample(SUBS + ("42", "v", "raw"), rng.choice((0, 1, 1, 2)))
        elif segment.startswith("{") or segment == "*":
            out.append(str(rng.randint(1, 99_999)) if rng.random() < 0.7 else f"c-{rng.randint(1, 999)}")
        elif "*" in segment:
            out.append(segment.replace("*", str(rng.randint(1, 9999))))
        else:
            out.append(segment)
    query = rng.choice(("", "", "", "?limit=50", "?expand=lines&limit=10", "?dry_run=true"))
    return "/" + "/".join(out) + query


def random_http_action(rng: random.Random) -> Json:
    pattern = rng.choice(ALLOW_PATHS + DENY_PATHS)
    path = instantiate_path(_fill_path(pattern, rng.choice(RESOURCES), rng), rng)
    return {"http": {"method": rng.choice(ANY_METHOD), "path": path}}


SSH_BUNDLES: dict[str, tuple[list[str], list[str]]] = {  # patterns, example commands
    "logs": (
        ["ls **", "grep **", "tail -n * /var/log/**", "journalctl -u * --since *"],
        ["ls -la /var/log | grep error", "journalctl -u app --since today",
         "tail -n 200 /var/log/nginx/error.log", "ls -la /var/log"],
    ),
    "status": (
        ["systemctl status *", "uptime", "df -h", "free -m", "ps aux", "grep **"],
        ["systemctl status nginx", "uptime", "df -h", "ps aux | grep python", "free -m"],
    ),
    "restart": (
        ["systemctl restart nginx", "systemctl restart app", "systemctl status *"],
        ["systemctl restart nginx", "systemctl status app && systemctl restart app"],
    ),
    "k8s": (
        ["kubectl get pods -n *", "kubectl logs * -n *", "grep **"],
        ["kubectl get pods -n payments", "kubectl logs api-7f9c -n payments | grep ERROR"],
    ),
}  # fmt: skip
SSH_DENY_BUNDLES: dict[str, tuple[list[str], list[str]]] = {
    "destructive": (
        ["rm **", "systemctl stop *", "reboot", "shutdown **"],
        ["rm -rf /tmp/cache", "systemctl stop nginx", "reboot"],
    ),
    "secrets": (["cat /etc/shadow", "cat /root/**"], ["cat /etc/shadow", "cat /root/.ssh/id_rsa"]),
}
ALL_SSH_COMMANDS = sorted({c for b in (SSH_BUNDLES, SSH_DENY_BUNDLES) for v in b.values() for c in v[1]})


def ssh_block(deny: bool, rng: random.Random) -> tuple[Json, str, Callable[[], Json]]:
    patterns, examples = rng.choice(list((SSH_DENY_BUNDLES if deny else SSH_BUNDLES).values()))
    return {"commands": patterns}, "", lambda: {"ssh": {"command": rng.choice(examples)}}


SCHEMAS = ("billing", "billing", "sales", "analytics", "inventory", "public", "auth")
SQL_ALLOW = ((["select"], 50), (["select", "insert", "update"], 25), (["insert"], 10),
             (["select", "insert"], 15))  # fmt: skip
SQL_DENY = ((["delete", "truncate"], 40), (["ddl", "grant"], 30), (["*"], 30))
SQL_QUERY = (
    "SELECT id, amount, status FROM billing.invoices "
    "WHERE customer_id = {n} AND status = '{w}' ORDER BY created_at DESC LIMIT 50"
)
WORDS = ("open", "paid", "void", "draft", "overdue", "refunded", "disputed", "pending")


def sql_block(deny: bool, rng: random.Random) -> tuple[Json, str, Callable[[], Json]]:
    schema = rng.choice(SCHEMAS)
    if deny:
        tables = [rng.choice((f"{schema}.secrets", "auth.*", "*.pii_*"))]
        statements = _weighted(rng, SQL_DENY)
    else:
        tables = rng.sample([f"{schema}.*", f"{schema}.invoices", f"{schema}.orders"], rng.choice((1, 2)))
        statements = _weighted(rng, SQL_ALLOW)
    query = SQL_QUERY.format(n=42, w="open")
    return {"statements": statements, "tables": tables}, "", lambda: {"sql": {"query": query}}


# --- rules and policy sets --------------------------------------------------------------------


@dataclass
class GeneratedRule:
    kind: str
    yaml: Json
    cedar: str
    agents: list[Entity]
    targets: list[Entity]
    make_action: Callable[[], Json]
    purpose: str | None  # task.purpose that satisfies its `when`, if any


BLOCKS = {"http": http_block, "ssh": ssh_block, "sql": sql_block}


def make_rule(kind: str, index: int, estate: Estate, rng: random.Random) -> GeneratedRule:
    a_shape, t_shape = _weighted(rng, [((a, t), w) for a, t, w in SHAPES])
    team = rng.choice(estate.teams)
    guardrail = a_shape == "any" and t_shape == "labels"
    deny = rng.random() < (0.8 if guardrail else DENY_SHARE)
    rule_id = f"{kind}-{team}-{index:05d}"
    agents = agent_side(a_shape, team, estate, rng)
    targets = target_side(t_shape, team, estate, rng)
    block, action_cond, make_action = BLOCKS[kind](deny, rng)
    rule: Json = {"id": rule_id, "effect": "deny" if deny else "allow"}
    if agents.yaml is not None:
        rule["agents"] = agents.yaml
    rule["targets"] = targets.yaml
    rule[kind] = block
    conditions = [*agents.conditions, *targets.conditions, action_cond]
    purpose = None
    if rng.random() < WHEN_SHARE:
        whens = HTTP_WHENS if kind == "http" else (HTTP_WHENS[0], HTTP_WHENS[2])
        cel, cedar_allow, cedar_deny = rng.choice(whens)
        rule["when"] = cel
        conditions.append(cedar_deny if deny else cedar_allow)
        purpose = "incident-response" if "purpose" in cel else None
    if not deny and rng.random() < APPROVAL_SHARE:
        rule["approval"] = {"approvers": [f"group:{team}-leads"], "valid_for": "30m"}
        conditions.append(f"context.approvals.contains({_quote(rule_id)})")
    cedar = cedar_policy(rule_id, deny, agents.scope, kind, block, targets.scope, conditions)
    return GeneratedRule(kind, rule, cedar, agents.pool, targets.pool, make_action, purpose)


def cedar_policy(
    rule_id: str, deny: bool, principal: str, kind: str, block: Json, resource: str,
    conditions: list[str],
) -> str:  # fmt: skip
    action = "action"
    methods = block.get("methods", ["*"]) if kind == "http" else ["*"]
    if methods != ["*"]:
        listed = ", ".join(f"Action::{_quote(m)}" for m in methods)
        action = f"action == {listed}" if len(methods) == 1 else f"action in [{listed}]"
    body = " && ".join(c for c in conditions if c)
    when = f" when {{ {body} }}" if body else ""
    effect = "forbid" if deny else "permit"
    return f"@id({_quote(rule_id)})\n{effect} ({principal}, {action}, {resource}){when};\n"


@dataclass
class Generated:
    name: str
    size: int
    estate: Estate
    rules: list[GeneratedRule]

    def of_kind(self, kind: str) -> list[GeneratedRule]:
        return [r for r in self.rules if r.kind == kind]

    def sources(self) -> list[PolicySource]:
        out = []
        for start in range(0, len(self.rules), RULES_PER_FILE):
            chunk = self.rules[start : start + RULES_PER_FILE]
            text = "rules:\n" + "".join(f"  - {json.dumps(r.yaml)}\n" for r in chunk)
            out.append(PolicySource(f"{self.name}-{start // RULES_PER_FILE:03d}.yaml", text))
        return out

    def cedar_text(self) -> str:
        return "".join(r.cedar for r in self.rules)

    def cedar_entities(self) -> str:
        entities = [
            {"uid": {"type": etype, "id": e.ident}, "attrs": {"name": e.ident, "labels": e.labels},
             "parents": []}
            for etype, group in (("Agent", self.estate.all_agents), ("Target", self.estate.all_targets))
            for e in group
        ]  # fmt: skip
        return json.dumps(entities)


def generate(kinds: Sequence[str], size: int, seed: int) -> Generated:
    """``size`` rules, the kinds taking turns, over the estate of that size."""
    name = "+".join(kinds)
    rng = random.Random(f"{seed}-{name}-{size}")
    estate = make_estate(size, random.Random(f"{seed}-estate-{size}"))
    rules = [make_rule(kinds[i % len(kinds)], i, estate, rng) for i in range(size)]
    return Generated(name, size, estate, rules)


# --- requests ---------------------------------------------------------------------------------


def _identity(entity: Entity, key: str) -> Json:
    return {key: entity.ident, "labels": entity.labels}


def make_requests(gen: Generated, kind: str, count: int, rng: random.Random) -> list[Json]:
    """About half aimed at a random rule (its agents, targets, action), half at random."""
    out = []
    estate = gen.estate
    rules = gen.of_kind(kind)
    for _ in range(count):
        request: Json
        if rng.random() < 0.55:
            rule = rng.choice(rules)
            agent = rng.choice(rule.agents or estate.all_agents)
            target = rng.choice(rule.targets or estate.all_targets)
            request = {"action": rule.make_action()}
            if rule.purpose is not None and rng.random() < 0.7:
                request["task"] = {"id": f"T-{rng.randint(1, 999)}", "purpose": rule.purpose}
            if "approval" in rule.yaml and rng.random() < 0.5:
                request["approvals"] = [rule.yaml["id"]]
        else:
            team = rng.choice(estate.teams)
            agent = rng.choice(estate.agents[team])
            pool = estate.targets[team] if rng.random() < 0.7 else estate.all_targets
            target = rng.choice(pool)
            request = {"action": random_action(kind, rng)}
            if rng.random() < 0.1:
                request["task"] = {"id": f"T-{rng.randint(1, 999)}", "purpose": "maintenance"}
        request["agent"] = _identity(agent, "id")
        request["target"] = _identity(target, "name")
        out.append(request)
    return out


def random_action(kind: str, rng: random.Random) -> Json:
    if kind == "http":
        return random_http_action(rng)
    if kind == "ssh":
        return {"ssh": {"command": rng.choice(ALL_SSH_COMMANDS)}}
    return {"sql": {"query": SQL_QUERY.format(n=42, w="open")}}


def with_action(requests: list[Json], actions: Callable[[int], Json]) -> list[Json]:
    return [{**r, "action": actions(i)} for i, r in enumerate(requests)]


def cedar_request(request: Json) -> Json:
    http = request["action"]["http"]
    path, _, query = http["path"].partition("?")
    segments = path[1:].split("/")
    context = {
        "path": path,
        "depth": len(segments),
        "seg": {f"s{i}": s for i, s in enumerate(segments)},
        "query": query,
        "task": request.get("task", {}),
        "approvals": request.get("approvals", []),
    }
    return {
        "principal": f"Agent::{_quote(request['agent']['id'])}",
        "action": f"Action::{_quote(http['method'])}",
        "resource": f"Target::{_quote(request['target']['name'])}",
        "context": context,
    }


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Timing:
    samples_ns: list[int]
    results: list[Any]
    outcomes: Counter[str]

    def percentile_us(self, p: float) -> float:
        ordered = sorted(self.samples_ns)
        rank = max(0, math.ceil(p * len(ordered)) - 1)  # nearest rank
        return ordered[rank] / 1000


def time_calls(
    call: Callable[[Json], Any], requests: Sequence[Json], iterations: int,
    outcome: Callable[[Any], str], warmup: Sequence[Json] | None = None,
) -> Timing:  # fmt: skip
    """Warm up (on the pool, or on ``warmup``), then time ``iterations`` calls cycling
    through the pool, GC off."""
    for request in warmup if warmup is not None else requests[:1_000]:
        call(request)
    samples = [0] * iterations
    results: list[Any] = [None] * iterations
    n = len(requests)
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i in range(iterations):
            request = requests[i % n]
            start = clock()
            result = call(request)
            samples[i] = clock() - start
            results[i] = result
    finally:
        gc.enable()
    return Timing(samples, results, Counter(outcome(r) for r in results))


def engine_outcome(decision: Any) -> str:
    if decision.reason == "invalid-request":
        raise EngineFailure(f"{decision.reason}: {decision.detail}")
    return str(decision.decision)


class EngineFailure(Exception):
    """The engine refused a request the benchmark built as valid: the figures would lie."""


@dataclass
class Row:
    kind: str
    rules: int
    timing: Timing
    iterations: int
    load_s: float
    of_kind: int = 0  # rules of this action kind in the set (the index keys on the kind)
    cedar: Timing | None = None
    agreement: float | None = None
    baseline_p50: float | None = None  # same kind at 10 rules
    goals: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return self.timing.percentile_us(0.50)

    @property
    def p99(self) -> float:
        return self.timing.percentile_us(0.99)

    @property
    def cedar_p50(self) -> float | None:
        return self.cedar.percentile_us(0.50) if self.cedar else None

    @property
    def ratio_vs_cedarpy(self) -> float | None:
        return self.cedar_p50 / self.p50 if self.cedar_p50 is not None else None

    @property
    def ratio_vs_10(self) -> float | None:
        return self.p50 / self.baseline_p50 if self.baseline_p50 else None

    def to_json(self) -> Json:
        mix = self.timing.outcomes
        total = sum(mix.values())
        return {
            "kind": self.kind,
            "rules": self.rules,
            "rules_of_kind": self.of_kind,
            "p50_us": round(self.p50, 2),
            "p99_us": round(self.p99, 2),
            "cedarpy_p50_us": _round(self.cedar_p50),
            "ratio_vs_cedarpy": _round(self.ratio_vs_cedarpy),
            "cedarpy_p99_us": _round(self.cedar.percentile_us(0.99) if self.cedar else None),
            "cedarpy_agreement": _round(self.agreement, 4),
            "ratio_vs_10_rules": _round(self.ratio_vs_10),
            "iterations": self.iterations,
            "allow_share": round(mix["allow"] / total, 3),
            "deny_share": round(mix["deny"] / total, 3),
            "approval_share": round(mix["approval_required"] / total, 3),
            "load_s": round(self.load_s, 2),
            "goals": {name: met for name, met in self.goals},
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    iterations: dict[str, int]
    cedar_budget_s: float  # per size: cedarpy at 10,000 rules is milliseconds a call
    cedar_max: int


FULL = Plan(
    SIZES,
    {"http": 30_000, "ssh": 20_000, "ssh-uncached": 2_000, "sql": 30_000,
     "sql-literals": 10_000, "sql-uncached": 2_000},
    cedar_budget_s=1.5,
    cedar_max=3_000,
)  # fmt: skip
QUICK = Plan(
    SIZES,
    {"http": 5_000, "ssh": 3_000, "ssh-uncached": 300, "sql": 5_000,
     "sql-literals": 2_000, "sql-uncached": 300},
    cedar_budget_s=0.3,
    cedar_max=500,
)  # fmt: skip

_unique = iter(range(10**9))  # parse caches are process-wide: never reuse an "uncached" text
Log = Callable[[str], None]


def load(gen: Generated, log: Log) -> tuple[PolicySet, float]:
    sources = gen.sources()
    start = time.perf_counter()
    policy_set = load_policies(sources)
    elapsed = time.perf_counter() - start
    log(f"  loaded {gen.size:>6,} {gen.name} rules in {elapsed:5.2f} s")
    return policy_set, elapsed


def run_http(size: int, plan: Plan, seed: int, log: Log) -> Row:
    gen = generate(("http",), size, seed)
    policy_set, load_s = load(gen, log)
    requests = make_requests(gen, "http", POOL, random.Random(f"{seed}-req-http-{size}"))
    iterations = plan.iterations["http"]
    timing = time_calls(policy_set.decide, requests, iterations, engine_outcome)
    row = Row("http", size, timing, iterations, load_s, size)
    row.cedar, row.agreement = run_cedar(gen, requests, timing, plan, log)
    return row


def run_cedar(
    gen: Generated, requests: list[Json], tether: Timing, plan: Plan, log: Log
) -> tuple[Timing, float]:
    start = time.perf_counter()
    policies = cedarpy.PolicySet.from_str(gen.cedar_text())
    entities = cedarpy.Entities.from_json_str(gen.cedar_entities())
    log(f"  cedarpy parsed {gen.size:>6,} policies in {time.perf_counter() - start:5.2f} s")
    cedar_requests = [cedar_request(r) for r in requests]

    def call(request: Json) -> Any:
        return cedarpy.is_authorized(request, policies, entities)

    probe = time.perf_counter()
    for request in cedar_requests[:20]:
        call(request)
    per_call = (time.perf_counter() - probe) / 20
    iterations = max(100, min(plan.cedar_max, int(plan.cedar_budget_s / per_call)))
    warmup = cedar_requests[: min(200, iterations)]
    timing = time_calls(call, cedar_requests, iterations, cedar_outcome, warmup)
    return timing, agreement(requests, cedar_requests, tether, timing, log)


def cedar_outcome(result: Any) -> str:
    return "allow" if result.allowed else "deny"


def agreement(
    requests: list[Json], cedar_requests: list[Json], tether: Timing, cedar: Timing, log: Log
) -> float:
    """Share of compared requests where both engines say allow, or both say not-allow."""
    n = min(len(requests), len(cedar.results), len(tether.results))
    same = 0
    shown = 0
    for i in range(n):
        ours = tether.results[i].decision == "allow"
        theirs = cedar.results[i].allowed
        errors = cedar.results[i].diagnostics.errors
        if ours == theirs and not errors:
            same += 1
        elif shown < 3:
            shown += 1
            log(f"    disagreement: {json.dumps(requests[i])} -> tether "
                f"{tether.results[i].to_dict()} cedar {theirs} {errors} {cedar_requests[i]}")  # fmt: skip
    return same / n


def run_ssh(gen: Generated, policy_set: PolicySet, load_s: float, plan: Plan, seed: int) -> list[Row]:
    size = gen.size
    requests = make_requests(gen, "ssh", POOL, random.Random(f"{seed}-req-ssh-{size}"))
    iterations = plan.iterations["ssh"]
    timing = time_calls(policy_set.decide, requests, iterations, engine_outcome)
    of_kind = len(gen.of_kind("ssh"))
    rows = [Row("ssh", size, timing, iterations, load_s, of_kind)]
    fresh = plan.iterations["ssh-uncached"]

    def unique_command(_: int) -> Json:
        return {"ssh": {"command": f"ls -la /var/log/app-{next(_unique)} | grep error"}}

    warmup = with_action(requests[:200], unique_command)
    distinct = with_action(_cycle(requests, fresh), unique_command)
    timing = time_calls(policy_set.decide, distinct, fresh, engine_outcome, warmup)
    rows.append(Row("ssh-uncached", size, timing, fresh, load_s, of_kind))
    return rows


def _cycle(items: list[Json], count: int) -> list[Json]:
    return (items * (count // len(items) + 1))[:count]


def sql_queries(rng: random.Random) -> dict[str, Callable[[], str]]:
    """Per measurement kind, a maker of the next query text."""

    def uncached() -> str:  # a new column each time: a new statement shape, not only literals
        return (
            f"SELECT id, amount, c{next(_unique)} FROM billing.invoices "
            f"WHERE customer_id = {rng.randint(1, 10**6)} AND status = '{rng.choice(WORDS)}'"
        )

    return {
        "sql": lambda: SQL_QUERY.format(n=42, w="open"),
        "sql-literals": lambda: SQL_QUERY.format(n=next(_unique), w=rng.choice(WORDS)),
        "sql-uncached": uncached,
    }


def run_sql(gen: Generated, policy_set: PolicySet, load_s: float, plan: Plan, seed: int) -> list[Row]:
    rng = random.Random(f"{seed}-req-sql-{gen.size}")
    pool = make_requests(gen, "sql", POOL, rng)
    rows = []
    for kind, make_query in sql_queries(rng).items():
        iterations = plan.iterations[kind]

        def action(_: int, make: Callable[[], str] = make_query) -> Json:
            return {"sql": {"query": make()}}

        requests = with_action(_cycle(pool, iterations), action)
        warmup = with_action(pool[:200], action)
        timing = time_calls(policy_set.decide, requests, iterations, engine_outcome, warmup)
        rows.append(Row(kind, gen.size, timing, iterations, load_s, len(gen.of_kind("sql"))))
    return rows


# --- goals and output -------------------------------------------------------------------------

HTTP_P50_GOAL_US = 20.0
CEDAR_SPEEDUP_GOAL = 20.0
SCALING_GOAL = 2.0
SQL_GOALS_US = {"sql": 30.0, "sql-literals": 60.0}


def judge(rows: list[Row]) -> None:
    """Attach the baselines (same kind at the smallest size) and the issue's goals."""
    smallest = min(r.rules for r in rows)
    baseline = {r.kind: r.p50 for r in rows if r.rules == smallest}
    for row in rows:
        if row.rules != smallest:
            row.baseline_p50 = baseline.get(row.kind)
        if row.kind == "http" and row.rules == 10_000:
            row.goals.append((f"p50<={HTTP_P50_GOAL_US:g}us", row.p50 <= HTTP_P50_GOAL_US))
            speedup = row.ratio_vs_cedarpy or 0.0
            row.goals.append((f">={CEDAR_SPEEDUP_GOAL:g}x cedarpy", speedup >= CEDAR_SPEEDUP_GOAL))
            if row.ratio_vs_10 is not None and smallest == 10:
                row.goals.append((f"<={SCALING_GOAL:g}x @10", row.ratio_vs_10 <= SCALING_GOAL))
        if row.kind in SQL_GOALS_US:
            limit = SQL_GOALS_US[row.kind]
            row.goals.append((f"p50<={limit:g}us", row.p50 <= limit))


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _mix(row: Row) -> str:
    mix = row.timing.outcomes
    total = sum(mix.values())
    parts = [f"{100 * mix[k] / total:.0f}" for k in ("allow", "deny", "approval_required")]
    return "/".join(parts)


def table(rows: list[Row]) -> str:
    header = ("kind", "rules", "of kind", "p50 us", "p99 us", "cedarpy p50", "x cedarpy", "x @10",
              "allow/deny/appr %", "calls", "goal")  # fmt: skip
    lines = [header]
    for r in rows:
        goal = "; ".join(f"{name} {'✓' if met else '✗'}" for name, met in r.goals) or "-"
        lines.append((
            r.kind, f"{r.rules:,}", f"{r.of_kind:,}", f"{r.p50:.1f}", f"{r.p99:.1f}", _fmt(r.cedar_p50, ".1f"),
            _fmt(r.ratio_vs_cedarpy, ".1f", "x"), _fmt(r.ratio_vs_10, ".2f", "x"), _mix(r),
            f"{r.iterations:,}", goal,
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, len(header) - 1}
    out = [
        "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    ]  # fmt: skip
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)


def notes(rows: list[Row], seed: int, elapsed: float) -> str:
    goals = [met for r in rows for _, met in r.goals]
    lines = [
        f"seed {seed}; Python {platform.python_version()}; cedarpy {metadata.version('cedarpy')}; "
        f"run took {elapsed:.1f} s",
        "x cedarpy = cedarpy p50 / Tether p50 (same HTTP rules and requests, same run); "
        "x @10 = p50 / p50 of the same kind at 10 rules",
    ]
    for r in rows:
        if r.agreement is not None and r.cedar is not None:
            lines.append(
                f"http @{r.rules:,}: Tether and cedarpy agree on {100 * r.agreement:.1f}% of "
                f"{len(r.cedar.results):,} requests (allow vs not-allow)"
            )
    lines.append(f"goals met: {sum(goals)}/{len(goals)} (informational; benchmarks never gate)")
    return "\n".join(lines)


def run(plan: Plan, seed: int, log: Log) -> list[Row]:
    rows: list[Row] = []
    for size in plan.sizes:
        log(f"{size:,} rules")
        rows.append(run_http(size, plan, seed, log))
        gen = generate(("ssh", "sql"), size, seed)  # one set: loading YAML is the slow part
        policy_set, load_s = load(gen, log)
        rows.extend(run_ssh(gen, policy_set, load_s, plan, seed))
        rows.extend(run_sql(gen, policy_set, load_s, plan, seed))
    order = ("http", "ssh", "ssh-uncached", "sql", "sql-literals", "sql-uncached")
    rows.sort(key=lambda r: (order.index(r.kind), r.rules))
    judge(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="one JSON object per measurement")
    parser.add_argument("--quick", action="store_true", help="fewer calls per measurement")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        rows = run(QUICK if args.quick else FULL, args.seed, log)
    except EngineFailure as error:
        print(f"policy_decision: the engine failed on a valid request: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    if args.json:
        for row in rows:
            print(json.dumps(row.to_json()))
    else:
        print(table(rows))
        print()
        print(notes(rows, args.seed, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
