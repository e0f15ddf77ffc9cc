"""What the HTTP API serves from: the policy set in force, swapped whole on reload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tether.policy import PolicySet

if TYPE_CHECKING:
    from tether.approvals.service import ApprovalService
    from tether.audit.emit import Auditor
    from tether.identity.service import IdentityService
    from tether.store import Store
    from tether.users.service import UserService
    from tether.vault.secrets import SecretStore
    from tether.vault.targets import TargetStore


class PolicyHolder:
    """Holds the policy set in force.

    A reload builds a complete new set first and then replaces the reference in one
    assignment, so a decision always runs against one whole set, never a mix of two.
    """

    def __init__(self, policy_set: PolicySet) -> None:
        self._current = policy_set

    @property
    def current(self) -> PolicySet:
        return self._current

    def replace(self, policy_set: PolicySet) -> PolicySet:
        """Put ``policy_set`` in force; returns the set it replaces."""
        previous, self._current = self._current, policy_set
        return previous


@dataclass(frozen=True)
class AppState:
    """Everything the API needs; built by ``tether serve`` (or a test) and handed to the app."""

    policies: PolicyHolder
    store: Store | None = None
    identity: IdentityService | None = None
    auditor: Auditor | None = None  # the node's audit emitter (tether.audit.emit)
    approvals: ApprovalService | None = None  # access requests and grants (tether.approvals)
    users: UserService | None = None  # humans, their roles and personal tokens (tether.users)
    secrets: SecretStore | None = None  # the credential vault (tether.vault.secrets)
    targets: TargetStore | None = None  # the target registry (tether.vault.targets)
