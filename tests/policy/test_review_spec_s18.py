"""Probes of a review of the policy engine against the spec (shared/spec/policy.md): each
failed before its fix. An empty `approval:` loaded as no approval (an unconditional allow);
an absent source_ip read as null, so `source_ip != x` held (spec 4: a missing field fails
closed); "*" in a list of label values was the text "*" (spec 1: any value); unary minus
wrapped -2**63 instead of failing (refused at load: write 0 - x)."""

from __future__ import annotations

import pytest

from tether.policy.errors import PolicyLoadError

from .conftest import http_request, policies


def test_a_null_approval_is_a_load_error_not_an_unconditional_allow() -> None:
    # spec 1: "An unknown key, a bad type, ... is a load error"; `approval` is a mapping.
    # Today `approval:` (YAML null) loads and the rule allows without any approval.
    text = """
    rules:
      - id: prod-write
        effect: allow
        http: {methods: [POST], paths: ["/v1/**"]}
        approval:
    """
    with pytest.raises(PolicyLoadError, match="'approval' must be a mapping"):
        policies(text)
    with pytest.raises(PolicyLoadError, match="'approval' must be a mapping"):
        policies(text.replace("approval:", "approval: ~"))


def test_absent_source_ip_is_a_missing_field_that_fails_closed() -> None:
    # spec 4: "A CEL `when` that fails at runtime (missing field, wrong type) makes an allow
    # rule not match". The request has no source_ip; the engine binds it to null instead.
    ps = policies(
        """
        rules:
          - id: not-from-blocked-host
            effect: allow
            http: {methods: [GET], paths: ["/**"]}
            when: 'source_ip != "203.0.113.9"'
        """
    )
    d = ps.decide(http_request())
    assert (d.decision, d.reason) == ("deny", "default-deny"), d


def test_star_inside_a_label_value_list_means_any_value() -> None:
    # spec 1: "a list value means any of them; `"*"` means present with any value".
    ps = policies(
        """
        rules:
          - id: all
            effect: allow
            http: {methods: ["*"], paths: ["/**"]}
          - id: no-labelled-env
            effect: deny
            targets: {labels: {env: [staging, "*"]}}
            http: {methods: ["*"], paths: ["/**"]}
        """
    )
    d = ps.decide(http_request(target_labels={"env": "prod"}))
    assert (d.decision, d.rule) == ("deny", "no-labelled-env"), d


def test_unary_minus_is_refused_at_load_and_its_spelling_fails_closed() -> None:
    # spec 4: errors fail closed; CEL defines int64 overflow (-(-2^63)) as an error, and the
    # engine's `+`, `-`, `*` do error -- its unary minus wrapped silently instead. Refused
    # at load now; `0 - x`, the spelling the error names, fails closed on overflow.
    rule = """
        rules:
          - id: positive-amounts
            effect: allow
            http: {methods: [POST], paths: ["/v1/refunds"]}
            when: '%s'
        """
    with pytest.raises(PolicyLoadError, match="0 - x"):
        policies(rule % "-task.amount < 0")
    ps = policies(rule % "0 - task.amount < 0")
    request = http_request("/v1/refunds", "POST", task={"amount": -9223372036854775808})
    assert ps.decide(request).decision == "deny"
    request = http_request("/v1/refunds", "POST", task={"amount": 5})
    assert ps.decide(request).decision == "allow"
