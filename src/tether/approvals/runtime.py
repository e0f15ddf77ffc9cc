"""Building the humans-in-the-loop services for a node, from its settings.

The node calls :func:`start_humans` once its identity service and audit trail exist: the
approval service follows the policy set in force, honours the node's revocation set, and
is registered with the identity service so that a revocation cancels pending requests and
grants at once; :meth:`Humans.start` runs the webhook notifier's delivery loop over the
durable outbox (when webhooks are configured) until the node stops. Every node of a
deployment runs it; the outbox's leases let one node deliver each notification.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from tether.approvals.config import ApprovalsConfig, ApprovalsConfigError
from tether.approvals.notify import WebhookNotifier
from tether.approvals.service import ApprovalService
from tether.audit.emit import Auditor
from tether.identity.service import IdentityService
from tether.policy import PolicySet
from tether.users.config import UsersConfig
from tether.users.oidc import CALLBACK_PATH, OidcLogin
from tether.users.service import UserService


@dataclass
class Humans:
    """The node's approval and user services, and the notifier's task."""

    approvals: ApprovalService
    users: UserService
    notifier: WebhookNotifier | None

    def start(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """The background tasks (webhook delivery), running until ``stop`` is set."""
        if self.notifier is None:
            return []
        return [asyncio.create_task(self.notifier.run(stop))]


def start_humans(
    config: ApprovalsConfig,
    identity: IdentityService,
    policies: Callable[[], PolicySet],
    auditor: Auditor | None,
    users_config: UsersConfig | None = None,
) -> Humans:
    """The services, wired; raises ``ApprovalsConfigError`` for a missing webhook or OIDC
    client secret."""
    redactor = None if auditor is None else auditor.redactor
    notifier = (
        WebhookNotifier.from_config(config, identity.engine, redactor) if config.webhooks else None
    )
    approvals = ApprovalService(
        identity.engine, policies, identity.sealer, auditor=auditor, revoked=identity.revoked,
        clock=identity.clock, pending_ttl=timedelta(seconds=config.pending_ttl),
        notify=notifier,
    )  # fmt: skip
    identity.revocation_listeners.append(approvals.on_revocation)
    users = UserService(
        identity.engine, identity.cipher, clock=identity.clock, sealer=identity.sealer,
        save_revisions=identity.save_revision_copy, revoked=identity.revoked,
    )  # fmt: skip
    oidc = None if users_config is None else users_config.oidc
    if oidc is not None:
        try:
            oidc.secret()
        except ValueError as error:
            raise ApprovalsConfigError(str(error)) from None
        users.oidc = OidcLogin(
            oidc, lambda: identity.issuers, users, clock=identity.clock,
            redirect_uri=identity.settings.issuer.rstrip("/") + CALLBACK_PATH,
        )  # fmt: skip
    return Humans(approvals, users, notifier)
