"""Shapes of the API's bodies, for validation where the API validates and for /docs."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, Field


class DecisionBody(BaseModel):
    """The decision object of the policy contract (spec section 3)."""

    decision: Literal["allow", "deny", "approval_required"]
    rule: str | None = Field(description="id of the deciding rule, or null")
    reason: str = Field(description="one reason code of the contract")
    detail: str | None = Field(default=None, description="more about the reason, if any")
    policy_version: str = Field(description="hash of the policy set that decided")


class Health(BaseModel):
    """The node is up and serving this policy set."""

    status: Literal["ok", "refusing"] = Field(
        description="``refusing`` while the node refuses every credential: its revocation "
        "list does not verify against the revocation ledger (docs/vault.md)"
    )
    policy_version: str
    rules: int = Field(description="number of rules in the policy set in force")
    revocations: Literal["verified", "unverified"] | None = Field(
        default=None, description="the revocation list's state (absent without identity)"
    )
    revocations_missing: int | None = Field(
        default=None,
        description="revocations in force that this node holds (and still honours) but the "
        "database lacks: it was put back to an earlier state (absent when none)",
    )


_NAMED: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "labels": {"type": "object"}},
}

# The request object of the policy contract (spec section 2). The endpoint does not enforce
# this schema itself: the engine validates, and answers a bad request with a deny.
DECIDE_REQUEST_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["agent", "target", "action"],
    "properties": {
        "agent": _NAMED,
        "runtime": _NAMED,
        "delegation": {"type": "object"},
        "task": {"type": "object"},
        "scope": {"type": "object"},
        "target": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "labels": {"type": "object"}},
        },
        "action": {
            "type": "object",
            "description": "exactly one of http, ssh, sql, mcp, files",
        },
        "source_ip": {"type": "string"},
        "time": {"type": "string", "format": "date-time"},
        "approvals": {"type": "array", "items": {"type": "string"}},
    },
    "example": {
        "agent": {"id": "billing-bot", "labels": {"team": "finance"}},
        "target": {"name": "billing-api", "labels": {"env": "prod"}},
        "action": {"http": {"method": "GET", "path": "/v1/invoices/7"}},
    },
}
