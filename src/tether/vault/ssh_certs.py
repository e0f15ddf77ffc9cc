"""Tether's target-facing SSH CA: a certificate per session, so no standing key to the host.

An SSH target whose credential is ``{"type": "certificate"}`` trusts this CA in its
``sshd_config`` (``TrustedUserCAKeys``); for each session the broker generates a fresh Ed25519
key pair in memory and has this CA sign it for exactly the remote login of the session. The
private key never leaves the process and is dropped with the session.

Security decisions:

* **Its own key, kept in the vault.** The CA key is an Ed25519 key created on first use and
  stored encrypted in the :class:`~tether.vault.secrets.SecretStore` under the reserved name
  :data:`SECRET_NAME` (``tether/ssh-target-ca``), which the admin API and CLI cannot read,
  list or set, and which no target may name as its credential. It is generated with the
  ``target-session`` purpose of :class:`~tether.identity.sshca.SshUserCA`, which refuses to
  load it as the agent-login CA: an agent's certificate can never log in to a target.
* **Created once.** Two nodes starting together race to create the key with
  ``mode="create"``; the loser reads the winner's key, so every node signs with one CA.
* **Narrow certificates.** Principal: the one remote login; key id
  ``agent=<a> task=<t> session=<id>`` (``sshd`` logs it at every login); validity the target's
  ``validity_seconds`` capped at the CA's 600 seconds (``sshd`` checks a certificate only at
  authentication, so it only has to outlive the dial); ``permit-port-forwarding``, because the
  broker itself opens the forwards its policy allowed (the agent never holds this
  certificate); no agent, no X11, no ``~/.ssh/rc``; a random serial.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncssh

from tether.identity.sshca import MAX_VALIDITY_SECONDS, CaPurpose, SshUserCA
from tether.vault.secrets import SecretExists, SecretNotFound, SecretStore

SECRET_NAME: Final = "tether/ssh-target-ca"  # noqa: S105 - a name, not a value
_KEY_ID_VALUE: Final = re.compile(r"[A-Za-z0-9._:@/+-]{1,128}")
_MAX_VALIDITY: Final = MAX_VALIDITY_SECONDS[CaPurpose.TARGET_SESSION.value]


@dataclass(frozen=True)
class SessionCredential:
    """A per-session key pair and its certificate, for one upstream login."""

    private_key: asyncssh.SSHKey
    certificate: asyncssh.SSHCertificate
    key_id: str


class TargetCA:
    """Loads (or creates) the target-facing CA from the secret store and signs session keys."""

    def __init__(
        self, secrets: SecretStore, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._secrets = secrets
        self._clock = clock
        self._ca: SshUserCA | None = None
        self._lock = asyncio.Lock()

    async def ca(self) -> SshUserCA:
        """The CA, created and stored on first use."""
        if self._ca is not None:
            return self._ca
        async with self._lock:
            if self._ca is None:
                self._ca = await self._load_or_create()
            return self._ca

    async def public_key_line(self) -> str:
        """The CA's public key, for the targets' ``TrustedUserCAKeys``."""
        return (await self.ca()).ca_public_key_openssh()

    async def session_credential(
        self,
        *,
        login: str,
        agent: str,
        task: str,
        session: str,
        validity_seconds: int,
        allow_pty: bool,
    ) -> SessionCredential:
        """A fresh Ed25519 key and its certificate for ``login`` on one target."""
        ca = await self.ca()
        key_id = session_key_id(agent=agent, task=task, session=session)
        key = asyncssh.generate_private_key("ssh-ed25519")
        line = ca.issue(
            key.export_public_key("openssh").decode("ascii"),
            principals=[login],
            key_id=key_id,
            validity_seconds=max(1, min(validity_seconds, _MAX_VALIDITY)),
            allow_pty=allow_pty,
            allow_port_forwarding=True,  # forwards are opened by Tether, after a decision
        )
        return SessionCredential(key, asyncssh.import_certificate(line), key_id)

    async def _load_or_create(self) -> SshUserCA:
        purpose = CaPurpose.TARGET_SESSION
        try:
            data = await self._secrets.get(SECRET_NAME)
        except SecretNotFound:
            fresh = SshUserCA.generate(clock=self._clock, purpose=purpose)
            try:
                await self._secrets.put(
                    SECRET_NAME,
                    fresh.private_key_bytes(),
                    description="Tether's target-facing SSH CA (per-session certificates)",
                    mode="create",
                )
                return fresh
            except SecretExists:  # another node created it first: use that one
                data = await self._secrets.get(SECRET_NAME)
        return SshUserCA.from_private_key_bytes(data, clock=self._clock, purpose=purpose)


def session_key_id(*, agent: str, task: str, session: str) -> str:
    """``agent=<a> task=<t> session=<s>``, each value in ``[A-Za-z0-9._:@/+-]``."""
    values = {"agent": agent, "task": task, "session": session}
    clean = {k: v if _KEY_ID_VALUE.fullmatch(v) else _squash(v) for k, v in values.items()}
    return " ".join(f"{k}={v}" for k, v in clean.items())


def _squash(value: str) -> str:
    """A value made safe for a key id: other characters become ``_``, at most 128."""
    return re.sub(r"[^A-Za-z0-9._:@/+-]", "_", value)[:128] or "_"
