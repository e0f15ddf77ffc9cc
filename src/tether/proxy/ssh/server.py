"""The broker's SSH listener: host key, agent authentication, channels, shutdown.

Authentication is done here and only here (STYLE 3): asyncssh's own certificate checks
match the whole SSH user name against the certificate's principals and hand the server no
certificate to map back to its claims, so :class:`_AgentConnection` takes over the public-key
check: it decodes what the agent presented, runs :mod:`tether.proxy.ssh.auth` on it, and only
then verifies the agent's signature over the session id, exactly as the SSH protocol
(RFC 4252 section 7) defines it. Passwords, keyboard-interactive, host-based and GSS
authentication are never offered.

After a successful check of the signature the target is looked up: it must exist, be of kind
``ssh`` and list the remote login in its ``users``; otherwise the login fails. Agent and X11
forwarding and remote (``-R``) forwarding are refused by the server options; local
forwarding (``-L``, ``direct-tcpip``) goes to :mod:`tether.proxy.ssh.forward`, which asks the
policy. asyncssh's built-in ``scp`` server (which would serve Tether's own files) is off;
OpenSSH's ``scp`` speaks SFTP and reaches :mod:`tether.proxy.ssh.sftp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any, cast

import asyncssh
from asyncssh.packet import SSHPacket, String
from asyncssh.public_key import decode_ssh_public_key

from tether.audit.subject import Subject
from tether.proxy.core import Services
from tether.proxy.ssh import hotpath
from tether.proxy.ssh.auth import (
    AuthRefused,
    SessionIdentity,
    certificate_identity,
    check_certificate,
    plain_key_identity,
)
from tether.proxy.ssh.channels import BrokerChannel, handle_process
from tether.proxy.ssh.config import SshConfig
from tether.proxy.ssh.forward import forward_handler
from tether.proxy.ssh.login import Login, LoginError, parse_login
from tether.proxy.ssh.retention import keep_recordings
from tether.proxy.ssh.session import BrokerContext, BrokerSession
from tether.proxy.ssh.sftp import BrokerSftp
from tether.proxy.ssh.sftp_server import BrokerProcess
from tether.proxy.ssh.wire import BrokerServerConnection
from tether.vault.ssh_certs import TargetCA
from tether.vault.target_specs import SshTargetSpec
from tether.vault.targets import Target, TargetError

log = logging.getLogger(__name__)


class HostKeyError(Exception):
    """The broker's host key file cannot be used; the message names it."""


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The broker's Ed25519 host key at ``path``, generated (mode 0600) if missing; a key
    readable by others, encrypted or not a key is :class:`HostKeyError` (it was an internal
    error, or a misleading "cannot listen")."""
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="tether-ssh-broker")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.export_private_key("openssh"))
        return key
    if path.stat().st_mode & 0o077:
        raise HostKeyError(f"{path}: the SSH host key must not be readable by others (0600)")
    try:
        return asyncssh.read_private_key(str(path))
    except asyncssh.KeyImportError as error:
        raise HostKeyError(f"{path}: not an unencrypted SSH private key ({error})") from None


class _AgentServer(asyncssh.SSHServer):
    """Per-connection callbacks; owns the session once the agent is authenticated."""

    def __init__(self, broker: SshBroker) -> None:
        self.broker = broker
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer_ip = ""
        self.login: Login | None = None
        self.identity: SessionIdentity | None = None
        self.target: Target | None = None
        self.session: BrokerSession | None = None
        self.refusal_audited = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("", 0)
        self.peer_ip = str(peer[0])
        if self.broker.over_limit():
            log.warning("ssh: more than max_sessions connections, refusing %s", self.peer_ip)
            asyncio.get_running_loop().call_soon(
                conn.disconnect, asyncssh.DISC_TOO_MANY_CONNECTIONS, "Tether: too many sessions"
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.connection_closed(self)

    def begin_auth(self, username: str) -> bool:
        with contextlib.suppress(LoginError):
            self.login = parse_login(username)  # for the audit of a refusal; checked again
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        assert self.conn is not None and self.identity is not None
        assert self.login is not None and self.target is not None
        self.session = BrokerSession(
            self.broker.context, self.identity, self.login, self.target, self.peer_ip, self.conn
        )
        self.broker.track(self.session.start())

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self.session is None:
            return False
        return forward_handler(self.session, dest_host, dest_port)

    # Forwards the broker never carries out: refused, and audited like any refusal (DESIGN
    # invariant 5; asyncssh's defaults refused them with nothing in the trail).

    async def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """``ssh -R``: a listener on the target (or the broker) is never opened."""
        await self._refuse_forward("remote_forward", f"{listen_host}:{listen_port}")
        return False

    async def unix_server_requested(self, listen_path: str) -> bool:
        """``ssh -R`` to a Unix socket path: never."""
        await self._refuse_forward("remote_forward", listen_path)
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        """``ssh -L`` to a Unix socket path (``direct-streamlocal``): never. (asyncssh takes
        an awaitable here for a session, not for a refusal: the audit runs beside.)"""
        self.broker.track(self._refuse_forward("forward_socket", dest_path))
        return False

    def refuse_request(self, kind: str) -> None:
        """A session channel's ``x11-req`` or agent forwarding request (``kind``,
        :class:`~tether.proxy.ssh.channels.BrokerChannel`): never; audited beside the
        answer, as a socket forward's refusal is."""
        self.broker.track(self._refuse_forward(kind, "requested"))

    async def _refuse_forward(self, kind: str, where: str) -> None:
        if self.session is not None:
            await self.session.refuse({"ssh": {kind: where}}, f"{kind} is never allowed")

    # --- authentication ----------------------------------------------------------------------

    async def check_key(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes, sid: bytes
    ) -> bool:
        """The agent's key for ``username`` (a query when ``msg`` is empty, else signed).

        The user name is parsed on every attempt: SSH lets a client change it between two.
        """
        try:
            try:
                login = parse_login(username)
            except LoginError as error:
                raise AuthRefused(str(error)) from None
            identity = await self._check(login, key_data, msg, signature, sid)
        except AuthRefused as refused:
            await self._audit_refusal(str(refused))
            return False
        except Exception as error:  # the store failed: the login is refused, and audited
            log.error("ssh login from %s could not be checked", self.peer_ip, exc_info=error)
            await self._audit_refusal(f"the login could not be checked: internal error "
                                      f"({type(error).__name__})")  # fmt: skip
            return False
        if identity is not None:
            self.login, self.identity = login, identity
        return True

    async def _check(
        self, login: Login, key_data: bytes, msg: bytes, signature: bytes, sid: bytes
    ) -> SessionIdentity | None:
        services = self.broker.context.services
        now = services.identity.clock().timestamp()
        ca_key = services.identity.keys.ssh_user_ca.ca_private_key
        certificate = None
        try:
            certificate = check_certificate(
                key_data, ca_key=ca_key, login=login, peer_ip=self.peer_ip, now=now
            )
        except AuthRefused:
            if not self.broker.context.config.allow_plain_keys or _is_certificate(key_data):
                raise
        key = _signing_key(key_data)
        if not msg:
            return None  # a query: the full check happens on the signed attempt
        if not key.verify(String(sid) + msg, signature):
            raise AuthRefused("bad signature")
        if certificate is not None:
            identity = await certificate_identity(services.identity, certificate)
        else:
            identity = await plain_key_identity(services.identity, key)
        self.target = await self._target(login)
        return identity

    async def _target(self, login: Login) -> Target:
        async with self.broker.context.lookups:
            try:
                target = await self.broker.context.services.targets.get(login.target)
            except TargetError as error:  # its stored row does not validate: fail closed
                raise AuthRefused(str(error)) from None
        if target is None or not isinstance(target.spec, SshTargetSpec):
            raise AuthRefused(f"no SSH target named {login.target!r}")
        if login.remote_user not in target.spec.users:
            raise AuthRefused(f"login {login.remote_user!r} is not allowed on {login.target}")
        return target

    async def _audit_refusal(self, reason: str) -> None:
        log.info("ssh login from %s refused: %s", self.peer_ip, reason)
        auditor = self.broker.context.services.auditor
        if auditor is None or self.refusal_audited:
            return
        self.refusal_audited = True
        target = f"ssh:{self.login}" if self.login is not None else "ssh"
        with contextlib.suppress(Exception):
            await auditor.token_refused(
                Subject(source_ip=self.peer_ip), reason=reason, grant_type="ssh", audience=target
            )


def _is_certificate(key_data: bytes) -> bool:
    try:
        decode_ssh_public_key(key_data)
    except asyncssh.KeyImportError:
        return True
    return False


def _signing_key(key_data: bytes) -> asyncssh.SSHKey:
    try:
        return decode_ssh_public_key(key_data)
    except asyncssh.KeyImportError:
        pass
    try:
        cert = asyncssh.public_key.decode_ssh_certificate(key_data)
    except asyncssh.KeyImportError:
        raise AuthRefused("unreadable key") from None
    return cert.key


class _AgentConnection(BrokerServerConnection):
    """The broker's server connection (:mod:`tether.proxy.ssh.wire`) with the public-key
    check handed to the broker, and its session channels served by
    :class:`~tether.proxy.ssh.sftp_server.BrokerProcess` (SFTP with only the extensions
    the broker carries out) on a :class:`~tether.proxy.ssh.channels.BrokerChannel` (requests
    asyncssh would refuse unseen reach the broker, to be refused and audited)."""

    def _process_session_open(
        self, packet: SSHPacket
    ) -> tuple[asyncssh.SSHServerChannel[Any], asyncssh.SSHServerSession[Any]]:
        chan, session = super()._process_session_open(packet)
        if (
            type(session) is not asyncssh.SSHServerProcess
            or type(chan) is not asyncssh.SSHServerChannel
        ):  # the broker sets process_factory; asyncssh makes plain session channels
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Session refused")
        session.__class__ = BrokerProcess  # adds a method, no state of its own
        chan.__class__ = BrokerChannel  # overrides two request parsers, no state of its own
        return chan, session

    async def validate_public_key(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        owner = cast(_AgentServer, self.get_owner())
        # The session id is what RFC 4252 section 7 signs; asyncssh keeps it private.
        return await owner.check_key(username, key_data, msg, signature, self._session_id)


class SshBroker:
    """The listener and its live sessions; :meth:`start` then :meth:`stop`."""

    def __init__(self, services: Services, config: SshConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.context = BrokerContext(
            services, config, TargetCA(services.secrets), data_dir / "recordings"
        )
        self._server: asyncio.Server | None = None
        self._servers: set[_AgentServer] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None  # ssh.recording.retention

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on ``ssh.listen`` (or ``sock``)."""
        hotpath.install()
        host_key = load_or_create_host_key(self.data_dir / self.config.host_key)
        options = asyncssh.SSHServerConnectionOptions(
            server_factory=self._new_server,
            server_host_keys=[host_key],
            process_factory=self._process,
            sftp_factory=self._sftp,
            allow_scp=False,
            encoding=None,
            line_editor=False,
            allow_pty=True,
            agent_forwarding=False,
            x11_forwarding=False,
            public_key_auth=True,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            login_timeout=self.config.login_timeout,
            window=self.config.window,
            max_pktsize=self.config.max_packet,
            keepalive_interval=60,
            encryption_algs=self.config.ciphers,
            compression_algs=None,
        )
        loop = asyncio.get_running_loop()

        def factory() -> asyncssh.SSHServerConnection:
            return _AgentConnection(loop, options, None, None)

        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=4096)
        else:
            self._server = await loop.create_server(
                factory, self.config.host, self.config.port, backlog=4096, reuse_address=True
            )
        self._watcher = asyncio.create_task(self.context.watch(), name="tether-ssh-watch")
        if self.config.recording.retention:
            self._keeper = asyncio.create_task(
                keep_recordings(self.context.recordings, self.config.recording.retention),
                name="tether-ssh-recordings-retention",
            )
        log.info("tether ssh broker listening on %s", self.config.listen)

    def _new_server(self) -> asyncssh.SSHServer:
        server = _AgentServer(self)
        self._servers.add(server)
        return server

    def over_limit(self) -> bool:
        return len(self._servers) > self.config.max_sessions

    def connection_closed(self, server: _AgentServer) -> None:
        self._servers.discard(server)
        if server.session is not None:
            self.track(server.session.end())

    def track(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ssh broker task failed: %r", task.exception())

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        owner = cast(_AgentServer, process.channel.get_connection().get_owner())
        if owner.session is None:
            process.exit(1)
            return
        await handle_process(process, owner.session)

    def _sftp(self, chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        owner = cast(_AgentServer, chan.get_connection().get_owner())
        assert owner.session is not None  # channels open only after authentication
        return BrokerSftp(chan, owner.session)

    async def stop(self) -> None:
        """Stop listening, close every connection, and wait for the session-end events."""
        if self._server is not None:
            self._server.close()
        for task in (self._watcher, self._keeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for server in list(self._servers):
            if server.conn is not None:
                server.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Tether is shutting down")
        for _ in range(100):
            if not self._tasks and not self._servers:
                break
            await asyncio.sleep(0.05)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
