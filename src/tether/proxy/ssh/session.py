"""One agent's SSH connection through the broker: who it is, its decisions, its upstream.

A :class:`BrokerSession` exists once the agent has authenticated. Every channel of the
connection (exec, shell, SFTP, port forward) asks it for decisions and for the upstream
connection, so the sequence is the same for all of them (DESIGN.md): build the policy request
from the verified claims → decide → **await the audit event of the decision** → enforce.

Security decisions:

* **Decided before dialled.** The upstream connection is opened lazily, on the first allowed
  action: a session whose every action is denied never touches the target.
* **Audit first** (DESIGN invariant 5): :meth:`BrokerSession.decide` returns only after the
  decision event is committed; if the audit trail is unavailable the action is refused.
* **Revocation ends the session** (DESIGN invariant 6): one watcher per broker re-checks
  every session's credential every ``live_check_interval`` (at most one second); on
  revocation, agent disablement or certificate expiry it disconnects the agent and closes the
  upstream connection. A check that cannot be made (the store unreachable) ends the session
  too: fail closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from tether.audit.subject import Subject
from tether.policy.model import DENY, INVALID_REQUEST, Decision
from tether.proxy.core import Services, decide, policy_request, subject_of, undecided
from tether.proxy.ssh.auth import AuthRefused, SessionIdentity, check_live
from tether.proxy.ssh.config import SshConfig
from tether.proxy.ssh.login import Login
from tether.proxy.ssh.upstream import DialRequest, Tuning, UpstreamError, dial
from tether.vault.ssh_certs import TargetCA
from tether.vault.target_specs import SshTargetSpec
from tether.vault.targets import Target

log = logging.getLogger(__name__)

PROTOCOL = "ssh"


#: Upstream logins in progress at once, for the whole broker: a burst of sessions reaches the
#: targets as a queue, not as a storm of simultaneous handshakes (sshd drops those past its
#: ``MaxStartups``).
MAX_CONCURRENT_DIALS = 32


@dataclass
class BrokerContext:
    """What every session of one broker shares."""

    services: Services
    config: SshConfig
    target_ca: TargetCA
    recordings: Path
    dials: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_DIALS)
    )
    # Store lookups behind short caches (agent labels, targets) go one at a time, so a burst
    # of sessions finding a cache entry expired makes one query, not one each.
    lookups: asyncio.Lock = field(default_factory=asyncio.Lock)
    sessions: set[BrokerSession] = field(default_factory=set)

    async def watch(self) -> None:
        """Check every live session every ``live_check_interval`` seconds, one after another
        (one store read per agent per poll, through the identity service's cache)."""
        while True:
            await asyncio.sleep(self.config.live_check_interval)
            for session in list(self.sessions):
                await session.check()


def new_session_id() -> str:
    return "ssh-" + secrets.token_hex(8)


@dataclass(eq=False)
class BrokerSession:
    """An authenticated agent connection and its (lazy) upstream connection."""

    context: BrokerContext
    identity: SessionIdentity
    login: Login
    target: Target
    peer_ip: str
    conn: asyncssh.SSHServerConnection
    id: str = field(default_factory=new_session_id)
    started: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    end_reason: str = "closed"
    open_channels: int = 0
    last_active: float = field(default_factory=time.monotonic)
    _upstream: asyncssh.SSHClientConnection | None = None
    _dial_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _channels: int = 0
    _ended: bool = False  # the end is audited
    _stopped: bool = False  # ended or terminated: nothing more reaches the target

    @property
    def subject(self) -> Subject:
        return subject_of(self.identity.claims, source_ip=self.peer_ip, session_id=self.id)

    def stopped(self) -> bool:
        """Ended or terminated: nothing more of this session reaches the target."""
        return self._stopped

    @property
    def spec(self) -> SshTargetSpec:
        assert isinstance(self.target.spec, SshTargetSpec)
        return self.target.spec

    def channel_opened(self) -> None:
        self.open_channels += 1
        self.last_active = time.monotonic()

    def channel_closed(self) -> None:
        self.open_channels = max(0, self.open_channels - 1)
        self.last_active = time.monotonic()

    def idle(self, now: float) -> bool:
        limit = self.context.config.idle_timeout
        return limit > 0 and self.open_channels == 0 and now - self.last_active > limit

    def next_channel_id(self) -> str:
        self._channels += 1
        return f"{self.id}.{self._channels}"

    # --- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Put the session under the broker's watcher, then audit its start; a start that
        cannot be audited ends the session (fail closed)."""
        self.context.sessions.add(self)  # watched from the first moment, audited or not
        auditor = self.context.services.auditor
        if auditor is None:
            return
        try:
            await auditor.session_start(
                self.subject, protocol=PROTOCOL, target=self.target.name, detail=self._detail()
            )
        except Exception as error:  # noqa: BLE001 - the trail failed: the session ends
            log.error("session %s: its start could not be audited: %r", self.id, error)
            await self._terminate("error", "the session could not be audited")

    def _detail(self) -> dict[str, Any]:
        return {
            "login": self.login.remote_user,
            "credential": self.identity.credential,
            "certificate": self.identity.via_certificate,
            "policy_version": self.context.services.policies.current.version,
        }

    async def check(self) -> None:
        """One check of the session: idle, revoked, expired or agent inactive ends it."""
        if self._ended:
            return
        if self.idle(time.monotonic()):
            await self._terminate("idle", "idle timeout")
            return
        try:
            await check_live(self.context.services.identity, self.identity)
        except AuthRefused as refused:
            log.info("session %s ended: %s", self.id, refused)
            await self._terminate("revoked", str(refused))
        except Exception as error:  # noqa: BLE001 - cannot check: fail closed
            log.error("session %s: liveness check failed: %r", self.id, error)
            await self._terminate("error", "internal error")

    async def _terminate(self, reason: str, message: str) -> None:
        self.end_reason = reason
        self._stopped = True  # a dial in progress is closed when it completes (upstream)
        self.context.sessions.discard(self)
        self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"Tether: {message}")
        await self.close_upstream()

    async def end(self) -> None:
        """Stop watching, close upstream, audit the end (once)."""
        if self._ended:
            return
        self._ended = self._stopped = True
        self.context.sessions.discard(self)
        await self.close_upstream()
        auditor = self.context.services.auditor
        if auditor is not None:
            await auditor.session_end(
                self.subject,
                protocol=PROTOCOL,
                target=self.target.name,
                duration_ms=(time.monotonic() - self.started) * 1000,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                reason=self.end_reason,
            )

    async def close_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.close()
            with contextlib.suppress(Exception):
                await upstream.wait_closed()

    # --- decisions and upstream --------------------------------------------------------------

    async def decide(self, action: Mapping[str, Any]) -> Decision:
        """Decide ``action`` and commit its audit event before returning (fails closed)."""
        return await self.decide_any([action])

    async def decide_any(self, actions: Sequence[Mapping[str, Any]]) -> Decision:
        """The first allowed of ``actions`` (or the last refusal); only that one is audited.

        For SFTP metadata operations (``stat``) that any of read, write or list permits.
        """
        services = self.context.services
        claims = self.identity.claims
        failed: Decision | None = None
        try:
            async with self.context.lookups:
                labels = await services.agents.get(claims.agent_id)
        except Exception as error:  # noqa: BLE001 - the store failed: refused, audited
            labels, failed = {}, undecided(services, error)
        started = time.perf_counter()
        for action in actions:
            request = policy_request(claims, labels, self.target, action, source_ip=self.peer_ip)
            if failed is not None:
                decision = failed
            elif services.approvals is not None and len(actions) == 1:  # grants held count
                try:
                    decision, _pending = await services.approvals.decide(request)
                except Exception as error:  # noqa: BLE001 - the store failed: refused, audited
                    decision = undecided(services, error)
            else:
                decision = decide(services, request)
            if decision.allowed:
                break
        if services.auditor is not None:
            await services.auditor.decision(
                request,
                decision,
                who=self.subject,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        return decision

    async def refuse(self, action: Mapping[str, Any], detail: str) -> Decision:
        """Deny ``action`` without putting it to the policy (it cannot be: a path that is not
        UTF-8, a link, a subsystem), audited as a decision (``invalid-request``)."""
        services = self.context.services
        decision = Decision(DENY, None, INVALID_REQUEST, detail, services.policies.current.version)
        if services.auditor is not None:
            request = {"target": {"name": self.target.name}, "action": dict(action)}
            await services.auditor.decision(request, decision, who=self.subject)
        return decision

    async def upstream(self) -> asyncssh.SSHClientConnection:
        """The upstream connection, dialled on first use; :class:`UpstreamError`, also once
        the session was ended (a revocation while the target was dialled)."""
        async with self._dial_lock:
            if self.stopped():
                raise UpstreamError("the session has ended")
            if self._upstream is None:
                claims = self.identity.claims
                request = DialRequest(
                    target=self.target.name,
                    spec=self.spec,
                    login=self.login.remote_user,
                    agent=claims.agent_id,
                    task=claims.task.id,
                    session=self.id,
                    allow_pty=True,
                )
                config = self.context.config
                async with self.context.dials:
                    upstream = await dial(
                        request,
                        self.context.services.secrets,
                        self.context.target_ca,
                        Tuning(config.window, config.max_packet),
                    )
                if self.stopped():  # ended while dialling: the new connection is not used
                    upstream.close()
                    raise UpstreamError("the session has ended")
                self._upstream = upstream
            return self._upstream


def refusal_text(decision: Decision) -> str:
    """The one line an agent sees on stderr (or as an SFTP error) for a refused action."""
    if decision.decision == "approval_required":
        pending = f": {decision.detail}" if decision.detail else ""  # the access request
        return f"Tether: approval required by rule {decision.rule} before this action{pending}"
    why = decision.reason + (f": {decision.detail}" if decision.detail else "")
    rule = f" (rule {decision.rule})" if decision.rule else ""
    return f"Tether: denied{rule}: {why}"


__all__ = ["BrokerContext", "BrokerSession", "UpstreamError", "refusal_text"]
