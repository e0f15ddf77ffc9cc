"""Loading a policy set from YAML sources (spec section 1) — all or nothing.

The caller reads the files (this package does no I/O) and passes them in
lexical order as :class:`PolicySource` values. A set that does not load whole
raises :class:`~tether.policy.errors.PolicyLoadError`; no partial set is ever
returned. ``policy_version`` is ``sha256:`` over the names and texts in order, so
an audit record names the exact policy that decided.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.policy.engine import PolicySet, PolicyTest
from tether.policy.errors import PolicyLoadError
from tether.policy.model import DECISIONS, REASONS
from tether.policy.rules import Rule, compile_rule
from tether.policy.yamlsrc import Node, parse_yaml

FILE_KEYS = ("rules", "tests")
TEST_KEYS = ("name", "request", "expect")
EXPECT_KEYS = ("decision", "rule", "reason")


@dataclass(frozen=True, slots=True)
class PolicySource:
    """One policy file: its name (for messages) and its YAML text."""

    name: str
    text: str


def policy_version(sources: Sequence[PolicySource]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        for part in (source.name, source.text):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    return "sha256:" + digest.hexdigest()


def load_policies(sources: Sequence[PolicySource]) -> PolicySet:
    """Compile every rule and test of the sources into one indexed :class:`PolicySet`."""
    rules: list[Rule] = []
    tests: list[PolicyTest] = []
    seen: dict[str, Rule] = {}
    for source in sources:
        document = _document(source)
        for rule in _rules(document, source.name, start=len(rules)):
            first = seen.get(rule.id)
            if first is not None:
                raise PolicyLoadError(
                    f"duplicate rule id (first defined at {first.file}:{first.line})",
                    file=source.name,
                    rule=rule.id,
                    line=rule.line,
                )
            seen[rule.id] = rule
            rules.append(rule)
        tests.extend(_tests(document, source.name))
    return PolicySet(
        version=policy_version(sources),
        rules=tuple(rules),
        tests=tuple(tests),
        files=tuple(s.name for s in sources),
    )


def _document(source: PolicySource) -> Node:
    document = parse_yaml(source.text, source.name)
    if not isinstance(document, Node):
        raise PolicyLoadError("a policy file is a mapping with 'rules:'", file=source.name, line=1)
    for key in document:
        if key not in FILE_KEYS:
            raise PolicyLoadError(
                f"unknown top-level key {key!r} (expected: rules, tests)",
                file=source.name,
                line=document.line_of(key),
            )
    if not isinstance(document.get("rules"), list):
        raise PolicyLoadError(
            "'rules:' (a list) is required", file=source.name, line=document.line_of("rules")
        )
    return document


def _rules(document: Node, file: str, start: int) -> list[Rule]:
    line = document.line_of("rules")
    return [
        compile_rule(node, file, start + offset, line)
        for offset, node in enumerate(document["rules"])
    ]


def _tests(document: Node, file: str) -> list[PolicyTest]:
    raw = document.get("tests", [])
    where = document.line_of("tests")
    if not isinstance(raw, list):
        raise PolicyLoadError("'tests:' must be a list", file=file, line=where)
    return [_test(node, file, where) for node in raw]


def _test(node: Any, file: str, where: int) -> PolicyTest:
    if not isinstance(node, Node):
        raise PolicyLoadError("each test is {name, request, expect}", file=file, line=where)
    for key in node:
        if key not in TEST_KEYS:
            raise PolicyLoadError(f"test: unknown key {key!r}", file=file, line=node.line_of(key))
    name = node.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyLoadError("a test needs a 'name'", file=file, line=node.line)
    expect = node.get("expect")
    if not isinstance(expect, Node) or "decision" not in expect:
        raise PolicyLoadError(
            f"test {name!r}: 'expect' needs a 'decision'", file=file, line=node.line_of("expect")
        )
    _check_expect(expect, name, file)
    if "request" not in node:
        raise PolicyLoadError(f"test {name!r}: 'request' is required", file=file, line=node.line)
    return PolicyTest(name, file, node.line, _plain(node["request"]), dict(expect))


def _check_expect(expect: Node, name: str, file: str) -> None:
    for key in expect:
        if key not in EXPECT_KEYS:
            raise PolicyLoadError(
                f"test {name!r}: expect: unknown key {key!r}", file=file, line=expect.line_of(key)
            )
    if expect["decision"] not in DECISIONS:
        raise PolicyLoadError(
            f"test {name!r}: expect.decision must be one of {sorted(DECISIONS)}",
            file=file,
            line=expect.line_of("decision"),
        )
    if "reason" in expect and expect["reason"] not in REASONS:
        raise PolicyLoadError(
            f"test {name!r}: expect.reason {expect['reason']!r} is not a reason code",
            file=file,
            line=expect.line_of("reason"),
        )


def _plain(value: Any) -> Any:
    """YAML values as plain JSON-like Python values (Node → dict)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
