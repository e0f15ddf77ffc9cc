"""The PostgreSQL broker's listener: TLS, login, target, upstream credential, then the pump.

One connection goes: startup packets, TLS and the agent's proof
(:mod:`tether.proxy.pg.handshake`; a ``CancelRequest`` goes to the cancel keys,
:mod:`tether.proxy.pg.cancel`) → the target named by ``database`` → its credential from the
vault (a password, or a session role, :mod:`tether.vault.pg_roles`) → login upstream →
``AuthenticationOk``, the server's ``ParameterStatus``, *Tether's own* ``BackendKeyData`` and
``ReadyForQuery`` → the pump (:mod:`tether.proxy.pg.connection`), deciding through the
session's policy (:mod:`tether.proxy.pg.policy`).

Security decisions:

* **Errors a client sees** (``FATAL``): ``28000`` TLS missing or replication asked,
  ``28P01`` authentication failed (which check failed is not said), ``3D000`` no such
  database (also for a target that is not ``postgres``: the names of other kinds are not
  revealed), ``08006`` the target could not be reached, ``08P01`` protocol violation,
  ``53300`` more than ``max_connections`` at once, ``55000`` the target's settings are not
  ones the broker can check statements under.
* **The login phase is timed** (``login_timeout``): a client that does not finish it is
  dropped before it can hold a target connection.
* **Cancel keys** given to clients are Tether's own random ones; a cancel request is sent
  on to the server only for a matching key (compared in constant time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tether.proxy.core import Services, policy_request, subject_of
from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import credentials, framing, tls
from tether.proxy.pg.approvals import SessionApprovals
from tether.proxy.pg.audit import SessionAudit
from tether.proxy.pg.cancel import CancelKeys
from tether.proxy.pg.config import PgProxyConfig
from tether.proxy.pg.connection import Pump
from tether.proxy.pg.handshake import Fatal, Handshake, client_parameters, write_fatal
from tether.proxy.pg.live import LiveChecks
from tether.proxy.pg.policy import SessionPolicy
from tether.proxy.pg.session import Session, parameter_safe
from tether.proxy.pg.upstream import UpstreamError, connect, send_cancel
from tether.vault.targets import TargetError

if TYPE_CHECKING:
    from tether.identity.claims import Claims
    from tether.vault.target_specs import PostgresTargetSpec
    from tether.vault.targets import Target

log = logging.getLogger(__name__)

REAP_INTERVAL: Final = 600.0
_PEER_ENDED: Final = frozenset({"client-closed", "server-closed"})  # nothing left to cancel


class PgBroker:
    """The broker: ``start()`` listens, ``stop()`` ends every session and closes."""

    def __init__(
        self,
        config: PgProxyConfig,
        services: Services,
        data_dir: Path,
        *,
        client_ca_pem: bytes | None = None,
    ) -> None:
        self.config = config
        self.services = services
        self.data_dir = data_dir
        self.client_ca_pem = client_ca_pem
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._cancel_keys = CancelKeys(config.connect_timeout)
        self._pumps: set[Pump] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._live_checks = LiveChecks(services.identity.check_live)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        cert, key = self.config.tls_cert, self.config.tls_key
        if cert is None or key is None:
            cert, key = tls.ensure_certificate(self.data_dir, self.config.host)
        else:
            cert, key = self.data_dir / cert, self.data_dir / key  # absolute paths stay
        self._tls = tls.server_context(cert, key, self.client_ca_pem)
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, backlog=1024
        )
        self._reaper = asyncio.create_task(self._reap_forever())
        log.info("postgres broker listening on %s", self.config.listen)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for pump in list(self._pumps):
            pump.end(
                "shutdown", be.error("57P01", "Tether is shutting down", severity="FATAL").encode()
            )
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=15)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # --- one connection ---------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if len(self._tasks) > self.config.max_connections:
                raise Fatal("53300", "too many connections to the broker")
            await self._connection(reader, writer)
        except Fatal as fatal:
            write_fatal(writer, fatal.sqlstate, str(fatal))
        except c.ProtocolViolation as error:
            write_fatal(writer, "08P01", str(error))
        except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("postgres broker connection failed")
            write_fatal(writer, "XX000", "internal error in the broker")
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                await asyncio.wait_for(writer.drain(), 2)
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshake = Handshake(reader, writer, self.config, self.services, self._tls)
        startup = await asyncio.wait_for(
            handshake.startup(self._cancel_keys.cancel), self.config.login_timeout
        )
        if startup is None:
            return
        peer = writer.get_extra_info("peername")
        source_ip = peer[0] if isinstance(peer, tuple) else None
        database = startup.get("database") or startup.get("user") or ""
        claims = await asyncio.wait_for(
            handshake.authenticate(database, source_ip), self.config.login_timeout
        )
        try:
            target = await self.services.targets.get(database)
        except TargetError as error:  # its stored row does not validate: fail closed
            log.error("%s", error)
            reason = f"the definition of target {database!r} is invalid"
            await handshake.refused_target(reason, database, claims, source_ip)
            raise Fatal("08006", f'the definition of database "{database}" is invalid') from None
        except Exception as error:  # the store failed: fail closed, audited
            log.error("postgres target %r could not be read", database, exc_info=error)
            reason = f"the target could not be read: internal error ({type(error).__name__})"
            await handshake.refused_target(reason, database, claims, source_ip)
            raise Fatal("XX000", "internal error in the broker") from None
        if target is None or target.kind != "postgres":
            reason = f"no PostgreSQL target named {database!r}"
            await handshake.refused_target(reason, database, claims, source_ip)
            raise Fatal("3D000", f'database "{database}" does not exist')
        await self._serve(reader, writer, handshake.decoder, startup, claims, target, source_ip)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: framing.FrontendDecoder,
        startup: c.StartupMessage,
        claims: Claims,
        target: Target,
        source_ip: str | None,
    ) -> None:
        spec: PostgresTargetSpec = target.spec  # type: ignore[assignment]
        try:
            credential = await credentials.obtain(
                self.services, target, claims, self.config.connect_timeout
            )
        except credentials.CredentialUnavailable as error:
            log.warning("postgres target %s: %s", target.name, error)
            raise Fatal("08006", "the target's credential is not available") from None
        try:
            await self._session(reader, writer, decoder, startup, claims, target, spec,
                                credential, source_ip)  # fmt: skip
        finally:
            await credentials.release(credential)

    async def _session(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: framing.FrontendDecoder,
        startup: c.StartupMessage,
        claims: Claims,
        target: Target,
        spec: PostgresTargetSpec,
        credential: credentials.Credential,
        source_ip: str | None,
    ) -> None:
        try:
            upstream = await connect(
                credential.login, client_parameters(startup), timeout=self.config.connect_timeout,
                search_path=spec.default_schema,
            )  # fmt: skip
        except UpstreamError as error:
            log.warning("postgres target %s: %s", target.name, error)
            raise Fatal("08006", "the target could not be reached or refused the login") from None
        began = time.monotonic()
        session_id = f"pg-{uuid.uuid4().hex}"
        who = subject_of(claims, source_ip=source_ip, session_id=session_id)
        audit = SessionAudit(self.services.auditor, who, target=target.name, database=spec.database)
        pid, key = self._cancel_keys.issue(upstream.key, credential.login)
        reason = "error"
        try:
            for name, value in upstream.parameters.items():
                if not parameter_safe(name, value):
                    raise Fatal(
                        "55000", f"the target's {name} is {value!r}; the broker needs it safe"
                    )
            labels = await self.services.agents.get(claims.agent_id)
            base = policy_request(claims, labels, target, {}, source_ip=source_ip)
            approvals = None
            if self.services.approvals is not None:
                approvals = SessionApprovals(self.services.approvals, self.services.policies, base)
                await approvals.refresh()
            policy = SessionPolicy(self.services, base, spec.database, approvals)
            session = Session(
                policy, default_schema=spec.default_schema, user=credential.login.user
            )
            session.status = upstream.status
            await audit.start({
                "database": spec.database, "upstream_user": credential.login.user,
                "credential": spec.credential.type, "tls": True,
            })  # fmt: skip
            hello = [be.Authentication(be.AUTH_OK).encode()]
            hello += [be.ParameterStatus(k, v).encode() for k, v in upstream.parameters.items()]
            hello.append(be.BackendKeyData(pid, key).encode())
            hello.append(be.ready(upstream.status))
            writer.write(b"".join(hello))
            await writer.drain()

            async def check_live() -> None:
                await self._live_checks.check(claims)

            async def refresh_labels() -> None:
                policy.set_labels(claims.agent_id, await self.services.agents.get(claims.agent_id))
                if approvals is not None:
                    await approvals.refresh()

            before = None if approvals is None else approvals.before_for(session.decider.decide)
            pump = Pump(session, audit, (reader, writer), decoder, upstream,
                        check_live=check_live, deadline=credential.deadline,
                        refresh=refresh_labels, before=before)  # fmt: skip
            self._pumps.add(pump)
            try:
                reason = await pump.run()
            finally:
                self._pumps.discard(pump)
            if reason not in _PEER_ENDED and upstream.key is not None:
                # Tether ended it (revoked, expired, shut down...): PostgreSQL notices a
                # closed client only when it next writes, so a statement in flight would
                # run on, as the agent, after the session ended. Cancel it.
                login = credential.login
                await send_cancel(login.host, login.port, login.tls, upstream.key,
                                  self.config.connect_timeout)  # fmt: skip
            await audit.end(
                duration_ms=(time.monotonic() - began) * 1000, bytes_in=pump.bytes_in,
                bytes_out=pump.bytes_out, reason=reason,
            )  # fmt: skip
        finally:
            self._cancel_keys.forget(pid)
            upstream.close()

    async def reap_once(self) -> list[str]:
        """Drop the expired session roles of every dynamic target; the names dropped."""
        return await credentials.reap_all(self.services, self.config.connect_timeout)

    async def _reap_forever(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaping session roles failed")
            await asyncio.sleep(REAP_INTERVAL)
