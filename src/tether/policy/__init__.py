"""Tether's policy engine: the decision contract of ``shared/spec/policy.md``.

Pure: no I/O. Callers read policy files and pass them as :class:`PolicySource`.

>>> ps = load_policies([PolicySource("a.yaml", "rules: []")])
>>> ps.decide({"agent": {"id": "a"}, "target": {"name": "t"},
...            "action": {"mcp": {"tool": "x"}}}).reason
'default-deny'
"""

from tether.policy.engine import PolicySet, PolicyTest
from tether.policy.errors import PolicyError, PolicyLoadError, RequestError
from tether.policy.lint import LintFinding, lint
from tether.policy.loader import PolicySource, load_policies, policy_version
from tether.policy.model import Decision
from tether.policy.shell import ParsedCommand, parse_command
from tether.policy.testing import TestOutcome, run_tests

__all__ = [
    "Decision",
    "LintFinding",
    "ParsedCommand",
    "PolicyError",
    "PolicyLoadError",
    "PolicySet",
    "PolicySource",
    "PolicyTest",
    "RequestError",
    "TestOutcome",
    "lint",
    "load_policies",
    "parse_command",
    "policy_version",
    "run_tests",
]
