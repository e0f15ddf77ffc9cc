"""The PostgreSQL broker's listener: TLS, login, target, upstream credential, then the pump.

One connection goes: startup packet (``SSLRequest`` answered ``S`` and TLS started;
``GSSENCRequest`` answered ``N``; ``CancelRequest`` mapped to the right server) → startup
message → cleartext password request → the agent's proof (:mod:`tether.proxy.pg.auth`) →
the target named by ``database`` → its credential from the vault (a password, or a session
role, :mod:`tether.vault.pg_roles`) → login upstream → ``AuthenticationOk``, the server's
``ParameterStatus``, *Tether's own* ``BackendKeyData`` and ``ReadyForQuery`` → the pump.

Security decisions:

* **TLS first** when ``require_tls`` (the default): a startup message without TLS gets
  ``FATAL 28000``; bytes sent after ``SSLRequest`` but before the handshake are a protocol
  violation (they could be injected by a man in the middle).
* **Errors a client sees** (``FATAL``): ``28000`` TLS missing or replication asked,
  ``28P01`` authentication failed (which check failed is not said), ``3D000`` no such
  database (also for a target that is not ``postgres``: the names of other kinds are not
  revealed), ``08006`` the target could not be reached, ``08P01`` protocol violation.
* **Cancel keys** given to clients are Tether's own random ones; a cancel request is sent
  on to the server only for a matching key (compared in constant time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import ssl
import time
import uuid
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tether.audit.subject import Subject
from tether.identity.errors import CredentialError
from tether.policy.model import APPROVAL_REQUIRED
from tether.proxy.core import Services, policy_request, subject_of
from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg import credentials, framing, tls
from tether.proxy.pg.approvals import SessionApprovals
from tether.proxy.pg.audit import SessionAudit
from tether.proxy.pg.auth import LoginRefused, parse_password
from tether.proxy.pg.config import PgProxyConfig
from tether.proxy.pg.connection import Pump
from tether.proxy.pg.live import LiveChecks
from tether.proxy.pg.session import Session, parameter_safe
from tether.proxy.pg.upstream import Login, UpstreamError, connect, send_cancel

if TYPE_CHECKING:
    from tether.identity.claims import Claims
    from tether.policy.model import Decision
    from tether.vault.target_specs import PostgresTargetSpec
    from tether.vault.targets import Target

log = logging.getLogger(__name__)

REAP_INTERVAL: Final = 600.0
CACHED_DECISIONS: Final = 512  # per session
CACHED_QUERY_CHARS: Final = 4096
_SAFE_CLIENT_ENCODINGS: Final = frozenset({"UTF8", "UNICODE", "SQLASCII"})


class Fatal(Exception):
    """End the connection before a session with ``FATAL sqlstate message``."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SessionPolicy:
    """The session's :class:`~tether.proxy.pg.session.Policy`: one request template per session.

    Decisions are cached per exact query text and default schema, or per statement shape
    (:func:`~tether.proxy.pg.deciding.shape_of`: the facts of the parsed text that the
    engine's SQL matching reads) and default schema when the decider gives one, while nothing
    they depend on can change: the cache belongs to one policy set (another set in force
    empties it), holds only for the session's context as it is (new agent labels empty it),
    and is not used at all when the set has a rule with a ``when`` condition (which may read
    the clock or the query text). Inside those bounds the engine is a pure function of the
    request, and of a query only through its shape, so a cached decision is the one it would
    make again.
    """

    def __init__(
        self,
        services: Services,
        base: dict[str, Any],
        database: str,
        approvals: SessionApprovals | None = None,
    ) -> None:
        self.services = services
        self.base = base
        self.database = database
        self.approvals = approvals  # grants held by the session (tether.proxy.pg.approvals)
        self._set: object = None
        self._cacheable = False
        self._cache: dict[tuple[Hashable, str], Decision] = {}

    def decide(self, query: str, default_schema: str, shape: Hashable | None = None) -> Decision:
        current = self.services.policies.current
        if current is not self._set:
            self._set = current
            self._cache.clear()
            self._cacheable = all(rule.when is None for rule in current.rules)
        key: tuple[Hashable, str] = (query if shape is None else shape, default_schema)
        cacheable = self._cacheable and len(query) <= CACHED_QUERY_CHARS
        if cacheable:
            hit = self._cache.get(key)
            if hit is not None:
                if self.approvals is not None and hit.decision == APPROVAL_REQUIRED:
                    return self._approved(hit, query, default_schema)
                return hit
        request = dict(self.base)
        request["action"] = {"sql": {"query": query, "database": self.database}}
        decision = current.decide(request, default_schema=default_schema)
        if cacheable:
            if len(self._cache) >= CACHED_DECISIONS:
                self._cache.clear()
            self._cache[key] = decision
        if self.approvals is not None and decision.decision == APPROVAL_REQUIRED:
            return self._approved(decision, query, default_schema)
        return decision

    def _approved(self, decision: Decision, query: str, default_schema: str) -> Decision:
        """``decision`` with the session's grants applied (``approval_required`` only)."""
        assert self.approvals is not None
        request = dict(self.base)
        request["action"] = {"sql": {"query": query, "database": self.database}}
        return self.approvals.resolve(decision, request, default_schema)

    def set_labels(self, agent_id: str, labels: Mapping[str, str]) -> None:
        """The agent's labels as they are now (the cache is emptied if they changed)."""
        agent = {"id": agent_id, "labels": dict(labels)}
        if agent != self.base.get("agent"):
            self.base["agent"] = agent
            self._cache.clear()

    def current(self) -> object:
        if self.approvals is not None and self.approvals.active():
            return self.approvals.epoch()  # changes with the held grants too
        return self.services.policies.current


@dataclass
class _Live:
    key: bytes
    upstream_key: be.BackendKeyData | None
    login: Login


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
        self._live: dict[int, _Live] = {}
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
            _write_fatal(writer, fatal.sqlstate, str(fatal))
        except c.ProtocolViolation as error:
            _write_fatal(writer, "08P01", str(error))
        except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("postgres broker connection failed")
            _write_fatal(writer, "XX000", "internal error in the broker")
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                await asyncio.wait_for(writer.drain(), 2)
            writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = framing.FrontendDecoder(max_message=self.config.max_message_bytes)
        startup, secure = await asyncio.wait_for(
            self._startup(reader, writer, decoder), self.config.login_timeout
        )
        if startup is None:
            return
        peer = writer.get_extra_info("peername")
        source_ip = peer[0] if isinstance(peer, tuple) else None
        database = startup.get("database") or startup.get("user") or ""
        claims = await asyncio.wait_for(
            self._authenticate(reader, writer, decoder, database, secure, source_ip),
            self.config.login_timeout,
        )
        target = await self.services.targets.get(database)
        if target is None or target.kind != "postgres":
            raise Fatal("3D000", f'database "{database}" does not exist')
        await self._serve(reader, writer, decoder, startup, claims, target, source_ip)

    async def _read_packets(
        self, reader: asyncio.StreamReader, decoder: framing.FrontendDecoder
    ) -> list[tuple[c.StartupPacket | c.FrontendMessage, bytes]]:
        while True:
            data = await reader.read(16384)
            if not data:
                raise ConnectionError("client closed")
            items = decoder.feed(data)
            if items:
                return items

    async def _startup(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: framing.FrontendDecoder,
    ) -> tuple[c.StartupMessage | None, bool]:
        secure = False
        while True:
            items = await self._read_packets(reader, decoder)
            packet = items[0][0]
            if isinstance(packet, c.SSLRequest) and not secure:
                if len(items) > 1 or decoder.buffered:
                    raise c.ProtocolViolation("data after SSLRequest before the TLS handshake")
                writer.write(b"S")
                await writer.drain()
                assert self._tls is not None
                await writer.start_tls(self._tls)
                secure = True
                decoder.expect_startup()
            elif isinstance(packet, c.GSSENCRequest):
                writer.write(b"N")
                await writer.drain()
                decoder.expect_startup()
            elif isinstance(packet, c.CancelRequest):
                await self._cancel(packet)
                return None, secure
            elif isinstance(packet, c.StartupMessage):
                if len(items) > 1:
                    raise c.ProtocolViolation("a message before the authentication request")
                self._check_startup(packet, secure)
                return packet, secure
            else:
                raise c.ProtocolViolation("unexpected startup packet")

    def _check_startup(self, startup: c.StartupMessage, secure: bool) -> None:
        if self.config.require_tls and not secure:
            raise Fatal("28000", "the Tether broker requires TLS (sslmode=require or stronger)")
        replication = (startup.get("replication") or "false").lower()
        if replication not in ("false", "off", "no", "0"):
            raise Fatal("28000", "replication connections are not brokered")
        encoding = startup.get("client_encoding")
        if encoding is not None:
            # asyncpg quotes the value ('utf-8'), as the server's GUC parser accepts.
            normal = encoding.strip().strip("'").upper().replace("-", "").replace("_", "")
            if normal not in _SAFE_CLIENT_ENCODINGS:
                raise Fatal("22023", "the broker speaks client_encoding UTF8 only")

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: framing.FrontendDecoder,
        database: str,
        secure: bool,
        source_ip: str | None,
    ) -> Claims:
        writer.write(be.Authentication(be.AUTH_CLEARTEXT).encode())
        await writer.drain()
        items = await self._read_packets(reader, decoder)
        message = items[0][0]
        if len(items) > 1 or not isinstance(message, c.PasswordMessage):
            raise c.ProtocolViolation("expected a password message")
        peer_der = _peer_certificate(writer) if secure else None
        try:
            presented = parse_password(
                message.data, database=database, public_address=self.config.advertised,
                peer_der=peer_der,
            )  # fmt: skip
            return await self.services.identity.authenticate(presented)
        except LoginRefused as refused:
            await self._refused(str(refused), database, source_ip)
            raise Fatal(refused.sqlstate, "authentication failed") from None
        except CredentialError as error:
            await self._refused(str(error), database, source_ip)
            raise Fatal("28P01", "authentication failed") from None

    async def _refused(self, reason: str, database: str, source_ip: str | None) -> None:
        """A refused login is audited (``token.refused``) before the client hears of it."""
        log.info("postgres login refused: %s", reason)
        if self.services.auditor is not None:
            await self.services.auditor.token_refused(
                Subject(source_ip=source_ip), reason=reason, grant_type="postgres-login",
                audience=database,
            )  # fmt: skip

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
        client_params = {k: v for k, v in startup.params if k not in ("user", "database")}
        try:
            upstream = await connect(
                credential.login, client_params, timeout=self.config.connect_timeout
            )
        except UpstreamError as error:
            log.warning("postgres target %s: %s", target.name, error)
            raise Fatal("08006", "the target could not be reached or refused the login") from None
        began = time.monotonic()
        session_id = f"pg-{uuid.uuid4().hex}"
        who = subject_of(claims, source_ip=source_ip, session_id=session_id)
        audit = SessionAudit(self.services.auditor, who, target=target.name, database=spec.database)
        pid, key = self._new_key(upstream.key, credential.login)
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
            await audit.end(
                duration_ms=(time.monotonic() - began) * 1000, bytes_in=pump.bytes_in,
                bytes_out=pump.bytes_out, reason=reason,
            )  # fmt: skip
        finally:
            self._live.pop(pid, None)
            upstream.close()

    def _new_key(self, upstream_key: be.BackendKeyData | None, login: Login) -> tuple[int, bytes]:
        while True:
            pid = secrets.randbelow(2**31 - 1) + 1
            if pid not in self._live:
                break
        key = secrets.token_bytes(4)
        self._live[pid] = _Live(key, upstream_key, login)
        return pid, key

    async def _cancel(self, request: c.CancelRequest) -> None:
        live = self._live.get(request.process_id)
        if live is None or live.upstream_key is None:
            return
        if not hmac.compare_digest(live.key, request.secret_key):
            return
        await send_cancel(live.login.host, live.login.port, live.login.tls, live.upstream_key,
                          self.config.connect_timeout)  # fmt: skip

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


def _peer_certificate(writer: asyncio.StreamWriter) -> bytes | None:
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der


def _write_fatal(writer: asyncio.StreamWriter, sqlstate: str, message: str) -> None:
    if not writer.is_closing():
        writer.write(be.error(sqlstate, message, severity="FATAL").encode())


def client_parameters(startup: c.StartupMessage) -> Mapping[str, str]:
    return {k: v for k, v in startup.params if k not in ("user", "database")}
