"""Helpers for policy tests: build a policy set from inline YAML."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from tether.policy import PolicySet, PolicySource, load_policies


def policies(*texts: str) -> PolicySet:
    """A policy set from one or more YAML texts (named p0.yaml, p1.yaml, ...)."""
    return load_policies(
        [PolicySource(f"p{i}.yaml", textwrap.dedent(t)) for i, t in enumerate(texts)]
    )


def http_request(
    path: str = "/v1/invoices/7",
    method: str = "GET",
    *,
    agent: str = "billing-bot",
    target: str = "billing-api",
    **extra: Any,
) -> dict[str, Any]:
    action: dict[str, Any] = {"method": method, "path": path}
    if "headers" in extra:
        action["headers"] = extra.pop("headers")
    return {
        "agent": {"id": agent, "labels": extra.pop("agent_labels", {})},
        "target": {"name": target, "labels": extra.pop("target_labels", {})},
        "action": {"http": action},
        **extra,
    }


def request(kind: str, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "agent": {"id": extra.pop("agent", "bot")},
        "target": {"name": extra.pop("target", "host")},
        "action": {kind: body},
        **extra,
    }


@pytest.fixture
def make_policies() -> Any:
    return policies
