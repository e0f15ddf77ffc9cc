"""The example policies and config: they load with the real engine and their tests pass."""

from __future__ import annotations

from pathlib import Path

from tether.config import load_settings
from tether.policy import lint, run_tests
from tether.policyfiles import load_policy_dir, read_policy_dir

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KINDS = {"http", "ssh", "sql", "mcp", "files"}


def test_one_file_per_action_kind_plus_delegation() -> None:
    names = {source.name for source in read_policy_dir(EXAMPLES / "policies")}
    assert names == {f"{kind}.yaml" for kind in KINDS} | {"delegation.yaml"}


def test_every_example_test_passes() -> None:
    outcomes = run_tests(load_policy_dir(EXAMPLES / "policies"))
    misses = [f"{o.file}: {o.name}: {o.message}" for o in outcomes if not o.passed]
    assert misses == []
    per_file: dict[str, int] = {}
    for outcome in outcomes:
        per_file[outcome.file] = per_file.get(outcome.file, 0) + 1
    assert all(count >= 6 for count in per_file.values()), per_file
    assert len(per_file) == len(KINDS) + 1


def test_examples_cover_every_decision_of_the_contract() -> None:
    outcomes = run_tests(load_policy_dir(EXAMPLES / "policies"))
    reasons = {o.got.reason for o in outcomes}
    assert reasons >= {
        "allowed", "approval-needed", "denied-by-rule", "default-deny", "out-of-scope",
        "delegation-denied", "ambiguous-path", "shell-construct", "sql-parse-error",
        "sql-forbidden",
    }  # fmt: skip


def test_examples_lint_without_errors() -> None:
    findings = lint(load_policy_dir(EXAMPLES / "policies"))
    assert [str(f) for f in findings if f.severity == "error"] == []


def test_example_config_points_at_the_example_policies(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLES / "tether.yaml", environ={}, cwd=tmp_path)
    assert settings.policies == EXAMPLES / "policies"
    assert settings.data_dir.resolve() == (EXAMPLES.parent / ".tether").resolve()
    assert settings.listen == "127.0.0.1:8765"
