"""Spec section 1: loading is all or nothing, and every error names file, rule and line."""

from __future__ import annotations

import pytest

from tether.policy import PolicyLoadError, PolicySource, load_policies

from .conftest import policies

GOOD = """\
rules:
  - id: ok
    effect: allow
    http: {methods: [GET], paths: ["/a"]}
"""


def load_error(text: str) -> PolicyLoadError:
    with pytest.raises(PolicyLoadError) as info:
        policies(text)
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "rule", "words"),
    [
        (
            "rules:\n  - id: r1\n    effect: allow\n    htp: {methods: [GET], paths: [/a]}\n",
            4, "r1", "unknown key 'htp'",
        ),
        ("rules:\n  - id: r1\n    effect: maybe\n    http: {methods: [GET], paths: [/a]}\n",
         3, "r1", "allow or deny"),
        ("rules:\n  - id: r1\n    effect: allow\n", 2, "r1", "exactly one action block"),
        (
            "rules:\n  - id: r1\n    effect: allow\n    http: {methods: [GET], paths: [/a]}\n"
            "    ssh: {commands: [ls]}\n",
            5, "r1", "exactly one action block",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    http:\n      methods: [GET]\n"
            "      paths: [a/b]\n",
            6, "r1", "paths",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    when: 'task.purpose =='\n"
            "    http: {methods: [GET], paths: [/a]}\n",
            4, "r1", "CEL does not compile",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    when: 'nosuchvar == 1'\n"
            "    http: {methods: [GET], paths: [/a]}\n",
            4, "r1", "unknown variable",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    http: {methods: [GET], paths: [/a]}\n"
            "    agents: [a]\n    users: [b]\n",
            5, "r1", "not both",
        ),
        (
            "rules:\n  - id: r1\n    effect: deny\n    http: {methods: [GET], paths: [/a]}\n"
            "    approval: {approvers: [owner]}\n",
            5, "r1", "only allowed on allow rules",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    sql: {statements: [selec]}\n",
            4, "r1", "unknown class 'selec'",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    http: {methods: [GET], paths: [/a]}\n"
            "    effect: deny\n",
            5, None, "duplicate key",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    http: {methods: [GET], paths: [/a]}\n"
            "    approval: {approvers: [owner], valid_for: soon}\n",
            5, "r1", "valid_for",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    ssh: {commands: ['rm \"x']}\n",
            4, "r1", "commands",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n    files: {rename: [/a]}\n",
            4, "r1", "unknown key 'rename'",
        ),
        (
            "rules:\n  - id: r1\n    effect: allow\n"
            "    sql: {statements: [select], tables: [users]}\n",
            4, "r1", "schema.table",
        ),
    ],
)  # fmt: skip
def test_load_errors_name_file_rule_and_line(
    text: str, line: int, rule: str | None, words: str
) -> None:
    error = load_error(text)
    assert error.file == "p0.yaml"
    assert error.line == line, str(error)
    assert error.rule == rule
    assert words in str(error)
    assert str(error).startswith(f"p0.yaml:{line}")


def test_rule_ids_are_unique_across_files() -> None:
    with pytest.raises(PolicyLoadError) as info:
        policies(GOOD, GOOD)
    assert info.value.file == "p1.yaml"
    assert info.value.rule == "ok"
    assert "p0.yaml:2" in str(info.value)


def test_a_set_that_fails_anywhere_does_not_load_at_all() -> None:
    bad = "rules:\n  - id: bad\n    effect: allow\n"
    with pytest.raises(PolicyLoadError):
        policies(GOOD, bad)


@pytest.mark.parametrize(
    "text",
    ["", "- a\n", "rules: 3\n", "rules: []\nextra: 1\n", "rules: [1]\n", "{", "rules:\n  - 3\n"],
)
def test_malformed_files_are_load_errors(text: str) -> None:
    with pytest.raises(PolicyLoadError) as info:
        policies(text)
    assert info.value.file == "p0.yaml"


def test_version_names_the_exact_set() -> None:
    a = policies(GOOD)
    b = policies(GOOD)
    c = policies(GOOD.replace("/a", "/b"))
    assert a.version == b.version
    assert a.version != c.version
    assert a.version.startswith("sha256:")
    renamed = load_policies([PolicySource("other.yaml", GOOD)])
    assert renamed.version != a.version


def test_decisions_carry_the_policy_version() -> None:
    ps = policies(GOOD)
    decision = ps.decide(
        {"agent": {"id": "a"}, "target": {"name": "t"},
         "action": {"http": {"method": "GET", "path": "/a"}}}
    )  # fmt: skip
    assert decision.decision == "allow"
    assert decision.policy_version == ps.version
    assert decision.to_dict()["policy_version"] == ps.version


def test_tests_section_is_validated() -> None:
    bad = GOOD + "tests:\n  - name: t\n    request: {}\n    expect: {decision: perhaps}\n"
    with pytest.raises(PolicyLoadError) as info:
        policies(bad)
    assert info.value.line == 8


def test_label_selector_and_globs_compile() -> None:
    ps = policies(
        """
        rules:
          - id: r
            effect: allow
            agents: {labels: {team: [finance, billing], tier: "*"}}
            targets: ["billing-*"]
            http: {methods: ["*"], paths: ["/**"]}
        """
    )
    base = {"action": {"http": {"method": "DELETE", "path": "/x"}}}
    ok = {"agent": {"id": "a", "labels": {"team": "billing", "tier": "1"}},
          "target": {"name": "billing-eu"}, **base}  # fmt: skip
    assert ps.decide(ok).decision == "allow"
    no_tier = {"agent": {"id": "a", "labels": {"team": "billing"}},
               "target": {"name": "billing-eu"}, **base}  # fmt: skip
    assert ps.decide(no_tier).reason == "default-deny"
    other_target = dict(ok, target={"name": "hr-api"})
    assert ps.decide(other_target).reason == "default-deny"
