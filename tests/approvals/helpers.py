"""Shared pieces of the approval tests: a clock the test moves, policies, requests."""

from __future__ import annotations

import secrets
from typing import Any

from tests.identity_e2e.conftest import Clock
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.policy import PolicySet, PolicySource, load_policies

__all__ = ["POLICY", "Clock", "http_request", "policies", "ssh_request"]

POLICY = """
rules:
  - id: restart
    effect: allow
    agents: [bot, other-bot]
    targets: [web]
    ssh: {commands: ["systemctl restart *"]}
    approval: {approvers: ["group:sre"], valid_for: 10m}
  - id: invoices-write
    effect: allow
    agents: [bot]
    targets: [billing]
    http: {methods: [POST], paths: ["/v1/invoices/*"]}
    approval: {approvers: ["group:finance", "user:carol"], valid_for: 5m, count: 2}
  - id: drop-table
    effect: allow
    agents: [bot]
    targets: [db]
    sql: {statements: [ddl], tables: ["public.*"]}
    approval: {approvers: [owner], valid_for: 5m, scope: rule}
  - id: own
    effect: allow
    agents: [bot]
    targets: [files]
    files: {write: ["/srv/**"]}
    approval: {approvers: ["group:sre"], valid_for: 5m, allow_self: true}
  - id: refund
    effect: allow
    agents: [bot]
    targets: [billing]
    http: {methods: [POST], paths: ["/v1/refunds"]}
    approval: {approvers: ["group:finance"], valid_for: 5m, bind_body: true}
  - id: sam-may-restart
    effect: allow
    users: [sam]
    targets: [web]
    ssh: {commands: ["systemctl restart *"]}
  - id: read
    effect: allow
    agents: [bot]
    targets: [billing]
    http: {methods: [GET], paths: ["/**"]}
"""


def policies() -> PolicySet:
    return load_policies([PolicySource("approvals.yaml", POLICY)])


def ssh_request(
    command: str, *, agent: str = "bot", task: str = "T-1", **extra: Any
) -> dict[str, Any]:
    return {
        "agent": {"id": agent},
        "task": {"id": task},
        "target": {"name": "web"},
        "action": {"ssh": {"command": command}},
        **extra,
    }


def http_request(
    method: str, path: str, *, agent: str = "bot", task: str = "T-1"
) -> dict[str, Any]:
    return {
        "agent": {"id": agent},
        "task": {"id": task},
        "target": {"name": "billing"},
        "action": {"http": {"method": method, "path": path}},
    }


def fresh_cipher() -> EnvelopeCipher:
    """A cipher under a fresh master key (users are sealed under it: tether.users.store)."""
    return EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
