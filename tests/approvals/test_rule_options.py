"""The approval options a rule may carry: scope, count, allow_self, bind_body."""

from __future__ import annotations

import pytest

from tether.policy import PolicyLoadError, PolicySource, load_policies


def approval(extra: str) -> str:
    return (
        "rules:\n  - id: r\n    effect: allow\n    mcp: {tools: [x]}\n"
        f"    approval: {{approvers: [owner], valid_for: 5m{extra}}}\n"
    )


def test_defaults_and_options() -> None:
    rule = load_policies([PolicySource("a.yaml", approval(""))]).by_id["r"]
    assert rule.approval is not None
    assert (rule.approval.scope, rule.approval.count) == ("action", 1)
    assert not rule.approval.allow_self and not rule.approval.bind_body
    text = approval(", scope: rule, count: 3, allow_self: true, bind_body: true")
    rule = load_policies([PolicySource("a.yaml", text)]).by_id["r"]
    assert rule.approval is not None
    assert (rule.approval.scope, rule.approval.count) == ("rule", 3)
    assert rule.approval.allow_self and rule.approval.bind_body


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (", scope: everything", "approval.scope"),
        (", count: 0", "approval.count"),
        (", count: 21", "approval.count"),
        (", count: '2'", "approval.count"),
        (", count: true", "approval.count"),
        (", allow_self: 'yes'", "approval.allow_self"),
        (", bind_body: 1", "approval.bind_body"),
        (", quorum: 2", "unknown key"),
    ],
)
def test_bad_options_refused_with_their_line(extra: str, message: str) -> None:
    with pytest.raises(PolicyLoadError, match=message) as caught:
        load_policies([PolicySource("a.yaml", approval(extra))])
    assert "a.yaml" in str(caught.value)
