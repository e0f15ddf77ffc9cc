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
* **Rotated in two steps, with overlap** (:meth:`TargetCA.rotate`, ``tether target ssh-ca
  --rotate``): the first step stages a new key under :data:`NEXT_NAME` (nodes do not sign
  with it) so hosts can trust both keys; the second promotes it to :data:`SECRET_NAME` (a new
  version of that secret) and deletes the staged copy. The old private key is not kept
  anywhere readable by the CA after promotion. Nodes re-read the key at most ``refresh``
  seconds (30) after they last loaded it, so hosts must keep trusting the old key for
  ``refresh`` plus the longest certificate validity (600 s) after the promotion.
* **Narrow certificates.** Principal: the one remote login; key id
  ``agent=<a> task=<t> session=<id>`` (``sshd`` logs it at every login); validity the target's
  ``validity_seconds`` capped at the CA's 600 seconds (``sshd`` checks a certificate only at
  authentication, so it only has to outlive the dial); ``permit-port-forwarding``, because the
  broker itself opens the forwards its policy allowed (the agent never holds this
  certificate); no agent, no X11, no ``~/.ssh/rc``; a random serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncssh

from tether.identity.sshca import MAX_VALIDITY_SECONDS, CaPurpose, SshUserCA
from tether.vault.secrets import SecretExists, SecretNotFound, SecretStore

SECRET_NAME: Final = "tether/ssh-target-ca"  # noqa: S105 - a name, not a value
NEXT_NAME: Final = "tether/ssh-target-ca.next"  # the staged key of a rotation in progress
REFRESH_SECONDS: Final = 30.0
_KEY_ID_VALUE: Final = re.compile(r"[A-Za-z0-9._:@/+-]{1,128}")
_MAX_VALIDITY: Final = MAX_VALIDITY_SECONDS[CaPurpose.TARGET_SESSION.value]


@dataclass(frozen=True)
class SessionCredential:
    """A per-session key pair and its certificate, for one upstream login."""

    private_key: asyncssh.SSHKey
    certificate: asyncssh.SSHCertificate
    key_id: str


@dataclass(frozen=True)
class Rotation:
    """One step of a rotation: ``staged`` or ``promoted``, and the lines hosts trust now."""

    step: str
    trusted_lines: tuple[str, ...]


class TargetCA:
    """Loads (or creates) the target-facing CA from the secret store and signs session keys."""

    def __init__(
        self,
        secrets: SecretStore,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        refresh: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secrets = secrets
        self._clock = clock
        self._refresh = refresh
        self._monotonic = monotonic
        self._ca: SshUserCA | None = None
        self._version = 0
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def ca(self) -> SshUserCA:
        """The CA, created and stored on first use, re-read after ``refresh`` seconds."""
        if self._ca is not None and self._monotonic() - self._loaded_at < self._refresh:
            return self._ca
        async with self._lock:
            if self._ca is None or self._monotonic() - self._loaded_at >= self._refresh:
                data, version = await self._load_or_create()
                if self._ca is None or version != self._version:
                    purpose = CaPurpose.TARGET_SESSION
                    self._ca = SshUserCA.from_private_key_bytes(
                        data, clock=self._clock, purpose=purpose
                    )
                    self._version = version
                self._loaded_at = self._monotonic()
            return self._ca

    async def public_key_line(self) -> str:
        """The CA's public key, for the targets' ``TrustedUserCAKeys``."""
        return (await self.ca()).ca_public_key_openssh()

    async def trusted_lines(self) -> tuple[str, ...]:
        """What hosts must trust now: the CA's line, and a staged key's while one is staged."""
        lines = [await self.public_key_line()]
        staged = await self._staged()
        if staged is not None:
            lines.append(staged.ca_public_key_openssh())
        return tuple(lines)

    async def rotate(self) -> Rotation:
        """Stage a new key if none is staged, else promote the staged one (see the module)."""
        await self.ca()  # the current key exists before anything is staged
        staged = await self._staged()
        if staged is None:
            fresh = SshUserCA.generate(clock=self._clock, purpose=CaPurpose.TARGET_SESSION)
            with contextlib.suppress(SecretExists):  # staged concurrently: report that one
                await self._secrets.put(
                    NEXT_NAME,
                    fresh.private_key_bytes(),
                    description="the next target-facing SSH CA (rotation in progress)",
                    mode="create",
                )
            return Rotation("staged", await self.trusted_lines())
        await self._secrets.put(SECRET_NAME, staged.private_key_bytes(), mode="rotate")
        with contextlib.suppress(SecretNotFound):  # a concurrent promotion deleted it
            await self._secrets.delete(NEXT_NAME)
        self._loaded_at = -self._refresh  # this process signs with the new key at once
        return Rotation("promoted", (staged.ca_public_key_openssh(),))

    async def _staged(self) -> SshUserCA | None:
        try:
            data = await self._secrets.get(NEXT_NAME)
        except SecretNotFound:
            return None
        return SshUserCA.from_private_key_bytes(
            data, clock=self._clock, purpose=CaPurpose.TARGET_SESSION
        )

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

    async def _load_or_create(self) -> tuple[bytes, int]:
        try:
            return await self._secrets.get_versioned(SECRET_NAME)
        except SecretNotFound:
            fresh = SshUserCA.generate(clock=self._clock, purpose=CaPurpose.TARGET_SESSION)
            with contextlib.suppress(SecretExists):  # another node made it first: use that
                await self._secrets.put(
                    SECRET_NAME,
                    fresh.private_key_bytes(),
                    description="Tether's target-facing SSH CA (per-session certificates)",
                    mode="create",
                )
            return await self._secrets.get_versioned(SECRET_NAME)


def session_key_id(*, agent: str, task: str, session: str) -> str:
    """``agent=<a> task=<t> session=<s>``, each value in ``[A-Za-z0-9._:@/+-]``."""
    values = {"agent": agent, "task": task, "session": session}
    clean = {k: v if _KEY_ID_VALUE.fullmatch(v) else _squash(v) for k, v in values.items()}
    return " ".join(f"{k}={v}" for k, v in clean.items())


def _squash(value: str) -> str:
    """A value made safe for a key id: other characters become ``_``, at most 128."""
    return re.sub(r"[^A-Za-z0-9._:@/+-]", "_", value)[:128] or "_"
