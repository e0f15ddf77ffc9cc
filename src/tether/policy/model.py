"""The decision contract's values (spec section 3) and the parts of a normalised action."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

ALLOW: Final = "allow"
DENY: Final = "deny"
APPROVAL_REQUIRED: Final = "approval_required"
DECISIONS: Final = frozenset({ALLOW, DENY, APPROVAL_REQUIRED})

# Reason codes, exactly the list of spec section 3.
ALLOWED: Final = "allowed"
APPROVAL_NEEDED: Final = "approval-needed"
DENIED_BY_RULE: Final = "denied-by-rule"
DEFAULT_DENY: Final = "default-deny"
OUT_OF_SCOPE: Final = "out-of-scope"
DELEGATION_DENIED: Final = "delegation-denied"
AMBIGUOUS_PATH: Final = "ambiguous-path"
SHELL_CONSTRUCT: Final = "shell-construct"
SQL_PARSE_ERROR: Final = "sql-parse-error"
SQL_FORBIDDEN: Final = "sql-forbidden"
INVALID_REQUEST: Final = "invalid-request"
REASONS: Final = frozenset(
    {
        ALLOWED,
        APPROVAL_NEEDED,
        DENIED_BY_RULE,
        DEFAULT_DENY,
        OUT_OF_SCOPE,
        DELEGATION_DENIED,
        AMBIGUOUS_PATH,
        SHELL_CONSTRUCT,
        SQL_PARSE_ERROR,
        SQL_FORBIDDEN,
        INVALID_REQUEST,
    }
)

ACTION_KINDS: Final = ("http", "ssh", "sql", "mcp", "files")

# Most restrictive first: deny over approval_required over allow (spec section 4).
_SEVERITY: Final = {DENY: 2, APPROVAL_REQUIRED: 1, ALLOW: 0}


@dataclass(frozen=True, slots=True)
class Decision:
    """One answer of the engine. ``rule`` is the deciding rule's id, or None."""

    decision: str
    rule: str | None
    reason: str
    detail: str | None = None
    policy_version: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOW

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": self.decision, "rule": self.rule, "reason": self.reason}
        if self.detail is not None:
            out["detail"] = self.detail
        out["policy_version"] = self.policy_version
        return out


def more_restrictive(a: Decision, b: Decision) -> Decision:
    """The stricter of two part decisions; on a tie, the first one."""
    return b if _SEVERITY[b.decision] > _SEVERITY[a.decision] else a
