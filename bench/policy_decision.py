"""Policy decision latency: Tether's engine against cedarpy, measured in the same run.

Run: ``.venv/bin/python bench/policy_decision.py [--json] [--quick] [--seed N]``
(``make bench``). See ``bench/README.md`` for what each figure means.

For each size (10, 1,000 and 10,000 rules) the benchmark generates, from a fixed
seed, an HTTP policy set of N HTTP rules and an SSH+SQL set of N rules (half each:
loading YAML is the slow part of the run), over a synthetic estate of about N/10
targets and up to 300 agents, in teams. Rules mix exact names, globs,
label selectors, subject-less rules, deny rules, ``when`` conditions and approvals,
in the proportions of :data:`SHAPES`, so the engine's index (action kind, exact
target, exact agent) is exercised the way a real policy directory would exercise it:
most rules are keyed, some are only keyed on one side, a few are keyed on neither.

The HTTP set is also written in Cedar (one policy per rule, see :func:`cedar_policy`)
and evaluated with cedarpy on pre-parsed ``PolicySet`` and ``Entities`` handles. The
translation is exact for the requests generated here (canonical paths, no trailing
slash), so the two engines must agree on allow/deny; the agreement rate is printed.

SSH commands repeat (their parse is cached) except in ``ssh-uncached``; SQL is one
statement repeated (``sql``), the same statement with new literal values every call
(``sql-literals``), and a new statement shape every call (``sql-uncached``).

Each series is measured in the steady state: its warm-up decides every request of the pool
once, so each (agent, target) context the timed calls meet has been decided before, as in a
session of an agent on a target. What the first decision of a context costs is measured
apart, in ``http-new-context``: the same HTTP requests, each from a runtime never seen before.

Every latency is one ``decide`` call on a request dict, timed with
``time.perf_counter_ns`` (GC off while timing, warmed up first). Like a broker
(``tether.proxy.core.policy_request`` copies the labels and the action into a new dict for
every request), each call gets a request built just before it, untimed: new dicts, lists
and string values copied from a pool entry (:func:`fresh`). Deciding an entry of a pool of 2,000
prebuilt dicts would also time reading that entry back from memory, which a request a
broker has just built never costs. The figures are
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
    ("exact", "exact", 619),
    ("glob", "exact", 100),
    ("labels", "exact", 60),
    ("any", "exact", 60),
    ("exact", "glob", 100),
    ("exact", "labels", 55),
    ("labels", "glob", 4),  # team-wide rule: keyed on neither side
    ("any", "labels", 2),  # org-wide guardrail: keyed on neither side
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


def http_block(
    deny: bool, rng: random.Random, anchor: bool = False
) -> tuple[Json, str, Callable[[], Json]]:
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


def _identifier(rng: random.Random) -> str:
    return str(rng.randint(1, 99_999)) if rng.random() < 0.7 else f"c-{rng.randint(1, 999)}"


def instantiate_path(pattern: str, rng: random.Random) -> str:
    out = []
    for segment in pattern[1:].split("/"):
        if segment == "**":
            out += rng.sample((*SUBS, "42", "v", "raw"), rng.choice((0, 1, 1, 2)))
        elif segment.startswith("{") or segment == "*":
            out.append(_identifier(rng))
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
ALL_SSH_COMMANDS = sorted(
    {c for b in (SSH_BUNDLES, SSH_DENY_BUNDLES) for v in b.values() for c in v[1]}
)


def ssh_block(
    deny: bool, rng: random.Random, anchor: bool = False
) -> tuple[Json, str, Callable[[], Json]]:
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


def sql_block(
    deny: bool, rng: random.Random, anchor: bool = False
) -> tuple[Json, str, Callable[[], Json]]:
    """``anchor``: the set's first SQL rule, an allow that speaks to the measured statement
    (without it a 10-rule set would only ever answer default-deny)."""
    schema = rng.choice(SCHEMAS)
    if anchor:
        tables, statements = ["billing.*"], ["select"]
    elif deny:
        tables = [rng.choice((f"{schema}.secrets", "auth.*", "*.pii_*"))]
        statements = _weighted(rng, SQL_DENY)
    else:
        tables = rng.sample(
            [f"{schema}.*", f"{schema}.invoices", f"{schema}.orders"], rng.choice((1, 2))
        )
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
    anchor = kind == "sql" and index < 2  # the first SQL rule (kinds take turns)
    deny = deny and not anchor
    rule_id = f"{kind}-{team}-{index:05d}"
    agents = agent_side(a_shape, team, estate, rng)
    targets = target_side(t_shape, team, estate, rng)
    block, action_cond, make_action = BLOCKS[kind](deny, rng, anchor)
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
        groups = (("Agent", self.estate.all_agents), ("Target", self.estate.all_targets))
        entities = [
            {
                "uid": {"type": t, "id": e.ident},
                "attrs": {"name": e.ident, "labels": e.labels},
                "parents": [],
            }
            for t, group in groups
            for e in group
        ]
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
    if kind == "sql":  # aim at rules that can say something about the measured query
        rules = [r for r in rules if _sql_reaches_invoices(r.yaml["sql"])] or rules
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


def _sql_reaches_invoices(block: Json) -> bool:
    return bool({"billing.*", "billing.invoices"} & set(block["tables"]))


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


@dataclass(frozen=True)
class Budget:
    """How many timed calls: as many as fit in ``seconds``, within [least, most]."""

    seconds: float
    least: int
    most: int

    def calls(self, per_call_s: float) -> int:
        return max(self.least, min(self.most, int(self.seconds / max(per_call_s, 1e-9))))


WARM_TIMED = 200  # the last warm-up calls, timed to size the series


def fresh(value: Any) -> Any:
    """A new copy of every dict, list and string value of ``value`` (its hash not yet
    computed, as for text just parsed); the keys are shared, like a broker's literal keys."""
    if type(value) is dict:
        return {k: fresh(v) for k, v in value.items()}
    if type(value) is list:
        return [fresh(v) for v in value]
    if type(value) is str:
        return value.encode().decode()
    return value


def steady_warmup(pool: list[Json]) -> list[Json]:
    """Every request of the pool once (so every context the timed calls meet has been decided
    before), then the first ones again: the timed tail of the warm-up is in the steady state."""
    return pool + pool[:WARM_TIMED]


@dataclass
class Series:
    """One measurement: ``call`` timed on ``requests`` (cycled), after ``warmup``."""

    call: Callable[[Json], Any]
    requests: Sequence[Json]
    warmup: Sequence[Json]
    budget: Budget
    outcome: Callable[[Any], str]
    planned: int = 0
    samples_ns: list[int] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def warm(self) -> None:
        """Run the warm-up calls, and size the series from the speed of the last ones."""
        timed = min(WARM_TIMED, len(self.warmup))
        for request in self.warmup[: len(self.warmup) - timed]:
            self.call(request)
        start = time.perf_counter()
        for request in self.warmup[len(self.warmup) - timed :]:
            self.call(request)
        per_call = (time.perf_counter() - start) / max(1, timed)
        self.planned = self.budget.calls(per_call)

    def run(self, count: int) -> None:
        """``count`` more timed calls, one ``perf_counter_ns`` pair around each."""
        call, requests, clock = self.call, self.requests, time.perf_counter_ns
        samples, results = self.samples_ns, self.results
        n = len(requests)
        for i in range(len(samples), len(samples) + count):
            request = fresh(requests[i % n])  # built just before the call, as a broker does
            begin = clock()
            result = call(request)
            samples.append(clock() - begin)
            results.append(result)

    def tally(self) -> None:
        """Count the outcomes (this is where an engine failure surfaces)."""
        self.outcomes = Counter(self.outcome(r) for r in self.results)

    def percentile_us(self, p: float) -> float:
        ordered = sorted(self.samples_ns)
        rank = max(0, math.ceil(p * len(ordered)) - 1)  # nearest rank
        return ordered[rank] / 1000


ROUNDS = 10


def measure(group: Sequence[Series]) -> None:
    """Warm every series up, then run them in interleaved rounds, GC off.

    Interleaving makes the ratios between the series of a group (sizes, Tether against
    cedarpy) fair on a machine that gets busier or quieter while the benchmark runs.
    """
    for series in group:
        series.warm()
    gc.collect()
    gc.freeze()  # the loaded policy sets are not garbage: keep them out of any collection
    gc.disable()
    try:
        for r in range(ROUNDS):
            for series in group:
                series.run(series.planned * (r + 1) // ROUNDS - series.planned * r // ROUNDS)
    finally:
        gc.enable()
        gc.unfreeze()
    for series in group:
        series.tally()


def engine_outcome(decision: Any) -> str:
    if decision.reason == "invalid-request":
        raise EngineFailure(f"{decision.reason}: {decision.detail}")
    return str(decision.decision)


def cedar_outcome(result: Any) -> str:
    return "allow" if result.allowed else "deny"


class EngineFailure(Exception):
    """The engine refused a request the benchmark built as valid: the figures would lie."""


@dataclass
class Row:
    kind: str
    rules: int
    of_kind: int  # rules of this action kind in the set (the index keys on the kind)
    timing: Series
    load_s: float
    cedar: Series | None = None
    agreement: float | None = None
    baseline_p50: float | None = None  # same kind at the smallest size
    goals: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return len(self.timing.samples_ns)

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

    def share(self, outcome: str) -> float:
        return self.timing.outcomes[outcome] / max(1, self.iterations)

    def to_json(self) -> Json:
        return {
            "kind": self.kind,
            "rules": self.rules,
            "p50_us": round(self.p50, 2),
            "p99_us": round(self.p99, 2),
            "cedarpy_p50_us": _round(self.cedar_p50),
            "ratio_vs_cedarpy": _round(self.ratio_vs_cedarpy),
            "rules_of_kind": self.of_kind,
            "calls": self.iterations,
            "cedarpy_p99_us": _round(self.cedar.percentile_us(0.99) if self.cedar else None),
            "cedarpy_calls": len(self.cedar.samples_ns) if self.cedar else None,
            "cedarpy_agreement": _round(self.agreement, 4),
            "ratio_vs_10_rules": _round(self.ratio_vs_10),
            "allow_share": round(self.share("allow"), 3),
            "deny_share": round(self.share("deny"), 3),
            "approval_share": round(self.share("approval_required"), 3),
            "load_s": round(self.load_s, 2),
            "goals": dict(self.goals),
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- the workloads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    cached: Budget  # decisions whose parse is cached (and every HTTP decision)
    uncached: Budget  # first parses: every call a new text
    cedar: Budget  # cedarpy at 10,000 rules takes tens of milliseconds a call


FULL = Plan(SIZES, Budget(0.6, 2_000, 30_000), Budget(0.4, 300, 3_000), Budget(0.8, 30, 3_000))
QUICK = Plan(SIZES[:2], Budget(0.2, 500, 5_000), Budget(0.1, 100, 500), Budget(0.2, 10, 500))

_unique = iter(range(10**9))  # parse caches are process-wide: never reuse an "uncached" text
Log = Callable[[str], None]


def load(gen: Generated, log: Log) -> tuple[PolicySet, float]:
    sources = gen.sources()
    start = time.perf_counter()
    policy_set = load_policies(sources)
    elapsed = time.perf_counter() - start
    log(f"  loaded {gen.size:>6,} {gen.name} rules in {elapsed:5.2f} s")
    return policy_set, elapsed


def _cycle(items: list[Json], count: int) -> list[Json]:
    return (items * (count // len(items) + 1))[:count]


def with_new_runtime(requests: list[Json]) -> list[Json]:
    """The requests, each from a runtime never seen before (no rule here selects runtimes, so
    every decision stays the same): the first decision of each (agent, runtime, target)."""
    return [{**r, "runtime": {"id": f"rt-{next(_unique)}"}} for r in requests]


def http_row(
    size: int, plan: Plan, seed: int, log: Log
) -> tuple[list[Row], list[Json], list[Json]]:
    """The HTTP rows (Tether and cedarpy; new contexts), with both engines' request lists."""
    gen = generate(("http",), size, seed)
    policy_set, load_s = load(gen, log)
    requests = make_requests(gen, "http", POOL, random.Random(f"{seed}-req-http-{size}"))
    series = Series(
        policy_set.decide, requests, steady_warmup(requests), plan.cached, engine_outcome
    )
    row = Row("http", size, size, series, load_s)
    new_contexts = Series(
        policy_set.decide,
        with_new_runtime(_cycle(requests, plan.uncached.most)),
        with_new_runtime(requests[-WARM_TIMED:]),
        plan.uncached,
        engine_outcome,
    )
    new_row = Row("http-new-context", size, size, new_contexts, load_s)
    start = time.perf_counter()
    policies = cedarpy.PolicySet.from_str(gen.cedar_text())
    entities = cedarpy.Entities.from_json_str(gen.cedar_entities())
    log(f"  cedarpy parsed {size:>6,} policies in {time.perf_counter() - start:5.2f} s")
    cedar_requests = [cedar_request(r) for r in requests]

    def cedar_call(request: Json) -> Any:
        return cedarpy.is_authorized(request, policies, entities)

    warmup = cedar_requests[-10:]  # the timed calls start at the pool's first request
    row.cedar = Series(cedar_call, cedar_requests, warmup, plan.cedar, cedar_outcome)
    return [row, new_row], requests, cedar_requests


def agreement(row: Row, requests: list[Json], cedar_requests: list[Json], log: Log) -> float:
    """Share of compared requests where both engines say allow, or both say not-allow."""
    assert row.cedar is not None
    ours, theirs = row.timing.results, row.cedar.results
    n = min(len(ours), len(theirs))
    same = 0
    for i in range(n):
        allowed, errors = theirs[i].allowed, theirs[i].diagnostics.errors
        if (ours[i].decision == "allow") == allowed and not errors:
            same += 1
        elif i - same < 3:  # the first three disagreements
            log(f"  disagreement: {json.dumps(requests[i % len(requests)])} -> Tether "
                f"{ours[i].to_dict()}, cedarpy {allowed} {errors} "
                f"{json.dumps(cedar_requests[i % len(cedar_requests)])}")  # fmt: skip
    return same / max(1, n)


def ssh_rows(
    gen: Generated, policy_set: PolicySet, load_s: float, plan: Plan, seed: int
) -> list[Row]:
    requests = make_requests(gen, "ssh", POOL, random.Random(f"{seed}-req-ssh-{gen.size}"))
    of_kind = len(gen.of_kind("ssh"))
    cached = Series(
        policy_set.decide, requests, steady_warmup(requests), plan.cached, engine_outcome
    )

    def unique_command(_: int) -> Json:
        return {"ssh": {"command": f"ls -la /var/log/app-{next(_unique)} | grep error"}}

    warmup = with_action(steady_warmup(requests), unique_command)
    distinct = with_action(_cycle(requests, plan.uncached.most), unique_command)
    fresh = Series(policy_set.decide, distinct, warmup, plan.uncached, engine_outcome)
    return [
        Row("ssh", gen.size, of_kind, cached, load_s),
        Row("ssh-uncached", gen.size, of_kind, fresh, load_s),
    ]


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


def sql_rows(
    gen: Generated, policy_set: PolicySet, load_s: float, plan: Plan, seed: int
) -> list[Row]:
    rng = random.Random(f"{seed}-req-sql-{gen.size}")
    pool = make_requests(gen, "sql", POOL, rng)
    of_kind = len(gen.of_kind("sql"))
    rows = []
    for kind, make_query in sql_queries(rng).items():
        budget = plan.uncached if kind == "sql-uncached" else plan.cached

        def action(_: int, make: Callable[[], str] = make_query) -> Json:
            return {"sql": {"query": make()}}

        warmup = with_action(steady_warmup(pool), action)
        requests = with_action(_cycle(pool, budget.most), action)
        series = Series(policy_set.decide, requests, warmup, budget, engine_outcome)
        rows.append(Row(kind, gen.size, of_kind, series, load_s))
    return rows


# --- goals and output -------------------------------------------------------------------------

HTTP_P50_GOAL_US = 20.0
CEDAR_SPEEDUP_GOAL = 20.0
SCALING_GOAL = 2.0
SQL_GOALS_US = {"sql": 30.0, "sql-literals": 60.0}
ORDER = ("http", "http-new-context", "ssh", "ssh-uncached", "sql", "sql-literals", "sql-uncached")


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
    return "/".join(f"{100 * row.share(k):.0f}" for k in ("allow", "deny", "approval_required"))


def table(rows: list[Row]) -> str:
    header = ("kind", "rules", "of kind", "p50 us", "p99 us", "cedarpy p50", "x cedarpy",
              "x @10", "allow/deny/appr %", "calls", "goal")  # fmt: skip
    lines = [header]
    for r in rows:
        goal = "; ".join(f"{name} {'✓' if met else '✗'}" for name, met in r.goals) or "-"
        lines.append((
            r.kind, f"{r.rules:,}", f"{r.of_kind:,}", f"{r.p50:.1f}", f"{r.p99:.1f}",
            _fmt(r.cedar_p50, ".1f"), _fmt(r.ratio_vs_cedarpy, ".1f", "x"),
            _fmt(r.ratio_vs_10, ".2f", "x"), _mix(r), f"{r.iterations:,}", goal,
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, len(header) - 1}
    out = [
        "  ".join(
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)


def notes(rows: list[Row], seed: int, elapsed: float, cpu: float) -> str:
    goals = [met for r in rows for _, met in r.goals]
    loading = sum({(r.rules, r.kind == "http"): r.load_s for r in rows}.values())
    lines = [
        f"seed {seed}; Python {platform.python_version()}; cedarpy {metadata.version('cedarpy')}; "
        f"run took {elapsed:.1f} s wall, {cpu:.1f} s CPU (a busy machine if they differ much), "
        f"{loading:.1f} s of it in load_policies",
        "x cedarpy = cedarpy p50 / Tether p50 (same HTTP rules and requests, same run); "
        "x @10 = p50 / p50 of the same kind at 10 rules",
        "ssh and sql rows share one policy set per size (half ssh, half sql rules: 'of kind')",
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
    """Load every set first, then measure each kind's series interleaved across sizes."""
    rows: list[Row] = []
    cedar_inputs: dict[int, tuple[list[Json], list[Json]]] = {}
    for size in plan.sizes:
        log(f"{size:,} rules")
        http_rows, requests, cedar_requests = http_row(size, plan, seed, log)
        rows.extend(http_rows)
        cedar_inputs[size] = (requests, cedar_requests)
        gen = generate(("ssh", "sql"), size, seed)  # one set: loading YAML is the slow part
        policy_set, load_s = load(gen, log)
        rows.extend(ssh_rows(gen, policy_set, load_s, plan, seed))
        rows.extend(sql_rows(gen, policy_set, load_s, plan, seed))
    rows.sort(key=lambda r: (ORDER.index(r.kind), r.rules))
    for kind in ORDER:
        log(f"measuring {kind}")
        group = [r for r in rows if r.kind == kind]
        measure([r.timing for r in group] + [r.cedar for r in group if r.cedar is not None])
    for row in rows:
        if row.cedar is not None:
            row.agreement = agreement(row, *cedar_inputs[row.rules], log)
    judge(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Policy decision latency, Tether vs cedarpy.")
    parser.add_argument("--json", action="store_true", help="one JSON object per measurement")
    parser.add_argument("--quick", action="store_true", help="10 and 1,000 rules, fewer calls")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        rows = run(QUICK if args.quick else FULL, args.seed, log)
    except EngineFailure as error:
        print(f"policy_decision: the engine failed on a valid request: {error}", file=sys.stderr)
        return 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if args.json:
        for row in rows:
            print(json.dumps(row.to_json()))
    else:
        print(table(rows))
        print()
        print(notes(rows, args.seed, elapsed, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
