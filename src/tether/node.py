"""Running one Tether node: store, identity, policy set, HTTP API and watchers, until a signal.

At start the node opens the store, loads the master key and its signing keys (creating them
on first start), builds the identity service with the revocations in force, and on a store
without any admin token creates one and prints it, once, on standard error.

``SIGTERM``, ``SIGINT`` or ``SIGHUP`` stops the node gracefully: the server stops accepting,
finishes the requests in flight, the watcher stops and the store closes; then the process
exits 0. A second ``SIGINT`` skips the wait for requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Final

import uvicorn
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from tether.api import AppState, create_app
from tether.approvals.config import ApprovalsConfigError
from tether.approvals.runtime import start_humans
from tether.audit.sinks.config import SinkConfigError
from tether.audit.sinks.runner import start_sinks
from tether.audit.startup import AuditStartError, start_auditor
from tether.config import Settings, split_listen
from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.masterkey import MasterKeyError, load_master_key
from tether.crypto.revisions import RowRevisions
from tether.identity.admintokens import first_admin_token
from tether.identity.jwks import JwksError, parse_jwks
from tether.identity.keystore import KeysUnverified, load_or_create
from tether.identity.revision_copy import FILE_NAME as REVISIONS_FILE_NAME
from tether.identity.revision_copy import RevisionCopy, RevisionCopyError
from tether.identity.revocation_copy import FILE_NAME as COPY_FILE_NAME
from tether.identity.revocation_copy import RevocationCopy, RevocationCopyError
from tether.identity.service import IdentityService
from tether.identity.workload import IssuerConfig, TrustedIssuers
from tether.policywatch import LoadRefused, PolicyReloader, load_initial
from tether.proxy.core import AgentLabels, Services
from tether.proxy.http.broker import BrokerMiddleware, HttpBroker
from tether.proxy.http.demo import DemoUpstream
from tether.proxy.http.tlsserver import ListenerTlsError, TlsH11Protocol, server_context
from tether.proxy.http.upgrade import UpgradeProtocol
from tether.proxy.pg.server import PgBroker
from tether.proxy.pg.tls import ListenerCertificateError
from tether.proxy.ssh.server import HostKeyError, SshBroker
from tether.store import Store, StoreError
from tether.store.database import sqlite_file
from tether.store.nodelock import NodeLocked, lock_database
from tether.store.sealing import shown, unsealed
from tether.vault.secrets import SecretStore
from tether.vault.targets import TargetStore

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS: Final = 10
# CPython's GIL switch interval in a node (the default is 5 ms). A thread that gives the
# GIL up for every database call must take it back from the event loop, which under load
# never gives it up of its own accord: each return then waits up to a whole interval. Set
# for the audit writer's thread, where at 5 ms a batch's transaction spent more time
# waiting for the GIL than in SQLite (docs/audit.md); that writer now runs in a process of
# its own, and the store's aiosqlite threads and the WAL checkpointer remain.
SWITCH_INTERVAL_SECONDS: Final = 0.0005


def tune_interpreter() -> None:
    """Process-wide settings of a node process (``tether serve`` calls this first)."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def freeze_startup_heap() -> None:
    """Keep what start-up built (modules, policies, keys, caches) out of every later
    garbage collection: a full collection walks every tracked object, and with the
    start-up heap in it each one cost the node a pause of ~100 ms and a share of the CPU
    of every audit event (docs/audit.md). Called once the node is ready to serve; objects
    that start-up left behind as garbage are collected first."""
    gc.collect()
    gc.freeze()
    log.info(
        "interpreter: GIL switch interval %.1f ms, %d start-up objects kept out of collections",
        sys.getswitchinterval() * 1000, gc.get_freeze_count(),
    )  # fmt: skip


class StartupError(Exception):
    """The node cannot start; the message says why."""


def bind(settings: Settings) -> socket.socket:
    """The listening socket for ``settings.listen``; raises :class:`StartupError`."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        sock = socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise StartupError(f"cannot listen on {settings.listen}: {reason}") from None
    # Accepted sockets inherit TCP_NODELAY. asyncio sets it only on sockets whose proto is
    # IPPROTO_TCP, and create_server's is 0: without it, every keep-alive response waits
    # ~40 ms for the client's delayed ACK (Nagle), headers and body being two writes.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # run_node handles the signals itself; uvicorn's own handlers would re-raise the
        # signal after shutdown and kill the process before the store is closed.
        yield


async def run_node(settings: Settings, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM/SIGINT/SIGHUP; raises :class:`StartupError` before serving.
    On SQLite the node holds the database's lock while it runs (:mod:`tether.store.nodelock`:
    one process serves a SQLite database)."""
    try:
        lock = lock_database(settings.database, "tether serve")
    except NodeLocked as error:
        raise StartupError(str(error)) from None
    try:
        try:
            store = await Store.open(settings.database)
        except StoreError as error:
            raise StartupError(str(error)) from None
        warn_if_shared(settings.database)
        try:
            await _serve(settings, sock, store)
        finally:
            await store.close()
    finally:
        if lock is not None:
            lock.release()


def warn_if_shared(database: str) -> bool:
    """Log a warning when a SQLite database file is readable or writable by others (one
    made before Tether created them 0600, or copied in): True when it did."""
    path = sqlite_file(database)
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path is not None else 0
    except OSError:
        return False
    if not mode & 0o077:
        return False
    log.warning(
        "%s has mode %04o: others may read it (password and token hashes, the audit "
        "trail); chmod 600 it and its -wal and -shm files", path, mode,
    )  # fmt: skip
    return True


async def _serve(settings: Settings, sock: socket.socket, store: Store) -> None:
    scheme = "https" if settings.tls.enabled else "http"
    identity = await open_identity(settings, store, default_issuer(sock, scheme=scheme))
    listener_tls = _listener_tls(settings, identity)
    try:
        holder = await load_initial(settings.policies, store)
    except LoadRefused as error:
        raise StartupError(f"policies did not load: {error}") from None
    await _announce_first_admin_token(store, identity)
    await _report_unsealed(store)
    try:
        auditor = await start_auditor(
            settings.audit, store.engine, lambda: identity.keys.ring.active
        )
    except AuditStartError as error:
        raise StartupError(str(error)) from None
    try:
        humans = start_humans(
            settings.approvals, identity, lambda: holder.current, auditor, settings.users
        )
    except ApprovalsConfigError as error:
        await auditor.log.close()
        raise StartupError(f"approvals: {error}") from None
    try:
        sinks = start_sinks(store.engine, settings.audit.sinks)
    except SinkConfigError as error:
        await auditor.log.close()
        raise StartupError(f"audit.sinks: {error}") from None
    vault_secrets = SecretStore(store.engine, identity.cipher)
    targets = TargetStore(store.engine, identity.sealer)
    state = AppState(
        holder, store, identity, auditor, approvals=humans.approvals, users=humans.users,
        secrets=vault_secrets, targets=targets,
    )  # fmt: skip
    services = broker_services(state)  # shared by every broker: one agent-label cache
    broker = _http_broker(settings, services)
    demo = await _demo_upstream(settings)
    try:
        pg_broker = await _pg_broker(settings, services)
    except ListenerCertificateError as error:
        await auditor.log.close()
        raise StartupError(f"pg_proxy.tls_cert, pg_proxy.tls_key: {error}") from None
    except OSError as error:
        await auditor.log.close()
        where = settings.pg_proxy.listen
        raise StartupError(f"pg_proxy: cannot listen on {where}: {error}") from None
    try:
        ssh_broker = await _ssh_broker(settings, services)
    except HostKeyError as error:
        await auditor.log.close()
        raise StartupError(f"ssh.host_key: {error}") from None
    except OSError as error:
        await auditor.log.close()
        raise StartupError(f"ssh: cannot listen on {settings.ssh.listen}: {error}") from None
    middleware = [Middleware(BrokerMiddleware, broker=broker)] if broker is not None else []
    server = _Server(_uvicorn_config(settings, state, middleware, listener_tls))
    stop = asyncio.Event()
    _handle_signals(server, stop)
    watchers = [asyncio.create_task(identity.watch_revocations(stop)), *humans.start(stop)]
    if settings.policy_watch:
        reloader = PolicyReloader(settings.policies, store, holder)
        watchers.append(asyncio.create_task(reloader.watch(stop)))
    host, port = sock.getsockname()[:2]
    freeze_startup_heap()
    log.info(
        "tether serving on %s://%s:%d (policies: %s)",
        scheme, _bracket(host), port, settings.policies,
    )  # fmt: skip
    try:
        await server.serve(sockets=[sock])
    finally:
        stop.set()
        if pg_broker is not None:
            await pg_broker.stop()  # sessions end (and are audited) before the trail closes
        if ssh_broker is not None:
            await ssh_broker.stop()  # SSH sessions end (and are audited) before the trail closes
        if broker is not None:
            await broker.close()  # its last exchange events go in before the trail closes
        await asyncio.gather(*watchers)
        await auditor.log.close()
        await sinks.stop()  # after the last events (the final checkpoint) are in the trail
        if demo is not None:
            await demo.stop()
    log.info("tether stopped")


async def _demo_upstream(settings: Settings) -> DemoUpstream | None:
    """The demo API of the quickstart, when ``http_proxy.demo_upstream`` asks for it."""
    listen = settings.http_proxy.demo_upstream
    if not listen:
        return None
    host, port = split_listen(listen)
    try:
        sock = socket.create_server((host, port))
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise StartupError(
            f"http_proxy.demo_upstream: cannot listen on {listen}: {reason}"
        ) from None
    demo = DemoUpstream(sock)
    await demo.start()
    log.info("demo upstream API on %s (README quickstart)", demo.url)
    return demo


def broker_services(state: AppState) -> Services:
    """What every broker front-end needs, built from the API's state of a started node."""
    assert state.identity is not None and state.store is not None
    assert state.secrets is not None and state.targets is not None
    return Services(
        policies=state.policies, identity=state.identity, secrets=state.secrets,
        targets=state.targets, auditor=state.auditor, approvals=state.approvals,
        agents=AgentLabels(state.store.engine, state.identity.sealer,
                           ttl=state.identity.settings.revocation_poll),
    )  # fmt: skip


def _http_broker(settings: Settings, services: Services) -> HttpBroker | None:
    """The HTTP broker on the node's listener (``http_proxy``), unless disabled."""
    if not settings.http_proxy.enabled:
        return None
    identity = services.identity
    return HttpBroker(services, settings.http_proxy, issuer=identity.settings.issuer)


async def _pg_broker(settings: Settings, services: Services) -> PgBroker | None:
    """The PostgreSQL broker on its own listener (``pg_proxy``), started; None if disabled."""
    if not settings.pg_proxy.enabled:
        return None
    identity = services.identity
    broker = PgBroker(
        settings.pg_proxy, services, settings.data_dir,
        client_ca_pem=identity.keys.x509_ca.ca_cert_pem(),
    )  # fmt: skip
    await broker.start()
    return broker


async def _ssh_broker(settings: Settings, services: Services) -> SshBroker | None:
    """The SSH and SFTP broker on its own listener (``ssh``), started; None if disabled."""
    if not settings.ssh.enabled:
        return None
    broker = SshBroker(services, settings.ssh, settings.data_dir)
    await broker.start()
    return broker


async def open_identity(
    settings: Settings,
    store: Store,
    issuer: str,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> IdentityService:
    """The identity service over ``store``: master key, signing keys, revocations in force."""
    config = settings.identity
    identity_settings = config.identity_settings(issuer)
    # The node's row revisions (tether.identity.revision_copy), held before anything is
    # read: its signing keys too are refused when put back older than it saw.
    revisions = RevisionCopy(settings.data_dir / REVISIONS_FILE_NAME, RowRevisions())
    try:
        revisions.hold()
    except RevisionCopyError as error:
        raise StartupError(
            f"the row revisions file does not parse: {error}; move it aside to start without "
            "it (the node then admits rows put back to an earlier state: docs/vault.md)"
        ) from None
    try:
        cipher = EnvelopeCipher(load_master_key(settings.data_dir)).witnessed(revisions.revisions)
        keys = await load_or_create(
            store.engine, cipher, clock=clock, trust_domain=identity_settings.trust_domain,
            overlap=float(identity_settings.max_token_lifetime),
        )  # fmt: skip
    except (MasterKeyError, DecryptionError, KeysUnverified) as error:
        raise StartupError(f"signing keys unusable: {error}") from None
    if keys.x509_ca.trust_domain != identity_settings.trust_domain:
        raise StartupError(
            f"identity.trust_domain is {identity_settings.trust_domain!r} but this database's "
            f"X.509 CA signs for {keys.x509_ca.trust_domain!r}"
        )
    issuers = TrustedIssuers.from_configs(config.issuer_configs(), clock=clock)
    await _check_jwks_files(config.issuer_configs())
    copy = RevocationCopy(settings.data_dir / COPY_FILE_NAME)
    service = IdentityService(
        store.engine, keys, cipher, identity_settings, issuers=issuers, clock=clock,
        revocation_copy=copy, revision_copy=revisions,
    )  # fmt: skip
    try:
        service.hold_revocation_copy()
    except RevocationCopyError as error:
        raise StartupError(
            f"the revocation copy does not parse: {error}; move it aside to start without it "
            "(the node then forgets the revocations the database lost: docs/vault.md)"
        ) from None
    await service.refresh_revocations()
    return service


async def _check_jwks_files(configs: Sequence[IssuerConfig]) -> None:
    """Each issuer's ``jwks_file`` is read and parsed once at start: a missing, unreadable
    or malformed file stopped nothing, and every token of that issuer was then refused with
    no word to the operator. (It is read again at each refresh: a replaced file is taken.)"""
    for issuer in configs:
        if issuer.jwks.path is None:
            continue
        try:
            parse_jwks(await issuer.jwks.fetcher()())
        except JwksError as error:
            raise StartupError(
                f"issuer {issuer.name}: jwks_file {issuer.jwks.path}: {error}"
            ) from None


def _listener_tls(settings: Settings, identity: IdentityService) -> ssl.SSLContext | None:
    """The listener's TLS context (``tls``), None for plain HTTP; raises StartupError."""
    if not settings.tls.enabled:
        return None
    client_ca = identity.keys.x509_ca.ca_cert_pem().decode("ascii")
    try:
        return server_context(settings.tls, settings.data_dir, client_ca)
    except ListenerTlsError as error:
        raise StartupError(str(error)) from None


def default_issuer(sock: socket.socket, *, scheme: str = "http") -> str:
    """``http(s)://HOST:PORT`` of the bound socket: the issuer when none is configured."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
        log.warning(
            "identity.issuer is not set and the node listens on every address: tokens "
            "will name http://127.0.0.1:%d; set identity.issuer to the URL agents use",
            port,
        )
        host = "127.0.0.1"
    return f"{scheme}://{_bracket(host)}:{port}"


async def _announce_first_admin_token(store: Store, identity: IdentityService) -> None:
    token = await first_admin_token(store.engine, identity.sealer, now=datetime.now(UTC))
    if token is None:
        return
    # Printed, not logged: it must reach the operator whatever the log level, exactly once.
    print(
        "tether: first start: created an admin token. It is shown only this once; keep it "
        f"secret (TETHER_ADMIN_TOKEN for the CLI):\n\n    {token}\n",
        file=sys.stderr,
        flush=True,
    )


async def _report_unsealed(store: Store) -> None:
    """Log the rows that have no seal: every node refuses them (tether.store.sealing)."""
    for table, keys in (await unsealed(store.engine)).items():
        log.error(
            "%d %s row(s) have no seal and are refused until `tether store seal` adopts "
            "them (rows from before the upgrade, or written outside Tether; docs/vault.md): %s",
            len(keys), table,
            ", ".join(shown(key) for key in keys[:20]) + (" ..." if len(keys) > 20 else ""),
        )  # fmt: skip


def _uvicorn_config(
    settings: Settings,
    state: AppState,
    middleware: list[Middleware],
    tls: ssl.SSLContext | None = None,
) -> uvicorn.Config:
    def context(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        assert tls is not None
        return tls  # built and checked at start (_listener_tls)

    return uvicorn.Config(
        _outermost(middleware, create_app(state)),
        host=settings.host,
        port=settings.port,
        log_config=None,  # the CLI configures logging (tether.cli.common.configure_logging)
        log_level=settings.log_level,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        # X-Forwarded-For names the client only when a trusted proxy sent it: uvicorn's
        # default believes any peer on 127.0.0.1, so a local client could pick the source
        # IP the policy (``source_ip`` in ``when``) and the audit trail see.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
        # h11, always: httptools mode hands the app only the parsed path (a ``#fragment``
        # reached the target in a test), and the HTTP broker decides on the raw path.
        # With TLS, the h11 protocol that also reports the client certificate (tlsserver).
        http="h11" if tls is None else TlsH11Protocol,
        ssl_context_factory=None if tls is None else context,
        # WebSocket upgrades reach the HTTP broker, which tunnels the allowed ones.
        ws=UpgradeProtocol,
    )


def _outermost(middleware: list[Middleware], app: ASGIApp) -> ASGIApp:
    """``app`` behind ``middleware`` (the first outermost), in front of FastAPI's own stack:
    a broker request then costs no FastAPI middleware (about a tenth of the HTTP broker's
    CPU per request, bench/http_proxy.py); uvicorn answers 500 to anything that escapes."""
    for layer in reversed(middleware):
        app = layer.cls(app, *layer.args, **layer.kwargs)
    return app


def _handle_signals(server: uvicorn.Server, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    # SIGHUP too (a closed terminal, a service manager's reload): by default it killed the
    # node at once, so open sessions were never audited as ended and the trail's last events
    # had no closing checkpoint. Policies reload on their own (policy_watch).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, _stop, server, stop, sig)


def _stop(server: uvicorn.Server, stop: asyncio.Event, sig: signal.Signals) -> None:
    if server.should_exit and sig == signal.SIGINT:
        server.force_exit = True
        return
    log.info("%s received, shutting down", sig.name)
    server.should_exit = True
    stop.set()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
