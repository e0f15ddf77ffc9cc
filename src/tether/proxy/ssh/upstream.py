"""The broker's SSH client to a target: host key always verified, credential from the vault.

Security decisions:

* **The host key is verified, always.** The target record holds OpenSSH ``known_hosts``
  lines and/or a host CA key (the target registry refuses a target with neither); they are
  the *only* trust anchors: no user or system ``known_hosts`` file, no ``~/.ssh/config``,
  no ssh-agent, no default keys are read. A key that matches neither refuses the connection
  (:class:`UpstreamError`, "host key mismatch") before any credential is offered.
* **The credential never reaches the agent.** A vaulted private key is read from the
  :class:`~tether.vault.secrets.SecretStore` at dial time (so a rotated key is used by the
  next session) and lives only in this process; a ``certificate`` credential is a fresh key
  pair certified for this one session by :class:`~tether.vault.ssh_certs.TargetCA`.
* **Only public-key authentication is offered upstream**; no password, no keyboard
  interactive, no agent forwarding, no X11.
* Errors are :class:`UpstreamError` with a reason written here (the agent sees it on stderr or
  as an SFTP failure); the details go to the debug log only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import asyncssh

from tether.proxy.ssh.wire import BrokerDialer
from tether.vault.secrets import SecretError, SecretNotFound, SecretStore
from tether.vault.ssh_certs import TargetCA
from tether.vault.target_specs import SshCertCredential, SshTargetSpec

log = logging.getLogger(__name__)


#: Ciphers asked of targets, in order: AES-GCM first (OpenSSL, the fastest in asyncssh), then
#: what older servers offer.
UPSTREAM_CIPHERS: Final = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


class UpstreamError(Exception):
    """The target could not be reached or refused us; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class DialRequest:
    """One upstream login: who, where, and for which session."""

    target: str
    spec: SshTargetSpec
    login: str
    agent: str
    task: str
    session: str
    allow_pty: bool


@dataclass(frozen=True, slots=True)
class Tuning:
    """SSH channel sizes used upstream (the broker's ``ssh.window`` and ``ssh.max_packet``)."""

    window: int = 8 * 1024 * 1024
    max_packet: int = 262144


def trusted_host_keys(spec: SshTargetSpec) -> asyncssh.SSHKnownHosts:
    """The known-hosts trust of ``spec``: its lines, plus its host CA for its host and port."""
    lines = [spec.known_hosts.strip()] if spec.known_hosts else []
    if spec.host_ca:
        pattern = spec.host if spec.port == 22 else f"[{spec.host}]:{spec.port}"
        lines.append(f"@cert-authority {pattern} {spec.host_ca.strip()}")
    return asyncssh.import_known_hosts("\n".join(lines) + "\n")


async def client_keys(
    request: DialRequest, secrets: SecretStore, target_ca: TargetCA
) -> list[asyncssh.SSHKey | tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]]:
    """The one credential offered to the target."""
    credential = request.spec.credential
    if isinstance(credential, SshCertCredential):
        issued = await target_ca.session_credential(
            login=request.login,
            agent=request.agent,
            task=request.task,
            session=request.session,
            validity_seconds=credential.validity_seconds,
            allow_pty=request.allow_pty,
        )
        return [(issued.private_key, issued.certificate)]
    try:
        data = await secrets.get(credential.secret)
    except (SecretNotFound, SecretError):
        raise UpstreamError(f"the credential of target {request.target} is unavailable") from None
    try:
        return [asyncssh.import_private_key(data)]
    except (asyncssh.KeyImportError, ValueError):
        raise UpstreamError(f"the credential of target {request.target} is not a key") from None


async def dial(
    request: DialRequest, secrets: SecretStore, target_ca: TargetCA, tuning: Tuning
) -> asyncssh.SSHClientConnection:
    """A connection to the target, logged in as ``request.login``; :class:`UpstreamError`."""
    spec = request.spec
    keys = await client_keys(request, secrets, target_ca)
    try:
        return await asyncssh.connect(
            spec.host,
            spec.port,
            username=request.login,
            known_hosts=trusted_host_keys(spec),
            client_keys=keys,
            agent_path=None,
            agent_forwarding=False,
            x11_forwarding=False,
            password=None,
            kbdint_auth=False,
            password_auth=False,
            gss_auth=False,
            host_based_auth=False,
            preferred_auth="publickey",
            config=None,
            connect_timeout=spec.connect_timeout,
            login_timeout=spec.connect_timeout,
            window=tuning.window,
            max_pktsize=tuning.max_packet,
            keepalive_interval=30,
            encryption_algs=UPSTREAM_CIPHERS,
            compression_algs=None,
            tunnel=BrokerDialer(),  # a plain TCP connection (tether.proxy.ssh.wire)
        )
    except asyncssh.HostKeyNotVerifiable:
        raise UpstreamError(f"target {request.target}: host key mismatch, refused") from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(f"target {request.target} refused the login") from None
    except (OSError, TimeoutError, asyncssh.Error) as error:
        log.debug("dial %s failed: %r", request.target, error)
        raise UpstreamError(f"target {request.target} is unreachable") from None
