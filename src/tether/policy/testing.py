"""Running the ``tests:`` of a policy set (spec section 7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.policy.engine import PolicySet, PolicyTest
from tether.policy.model import Decision


@dataclass(frozen=True, slots=True)
class TestOutcome:
    name: str
    file: str
    line: int
    passed: bool
    expected: dict[str, Any]
    got: Decision
    message: str

    __test__ = False  # not a pytest test class


def run_test(policy_set: PolicySet, test: PolicyTest) -> TestOutcome:
    got = policy_set.decide(test.request)
    misses = [
        f"{key}: expected {want!r}, got {getattr(got, key)!r}"
        for key, want in test.expect.items()
        if getattr(got, key) != want
    ]
    return TestOutcome(
        test.name, test.file, test.line, not misses, test.expect, got, "; ".join(misses)
    )


def run_tests(policy_set: PolicySet) -> list[TestOutcome]:
    """Every test of the set, in file order; a test passes when every expected key matches."""
    return [run_test(policy_set, test) for test in policy_set.tests]
