"""The HTTP broker: agents reach HTTP targets through Tether, which injects the credential.

Per request, in this order (DESIGN.md, the path of one action)::

    route (raw path / Host) → limits → authenticate (DPoP or certificate, revocation)
      → target → decide (policy, ``http`` action) → audit the decision
      → allow: inject the credential → forward exactly the decided request target
               → stream the response → audit the exchange
      → otherwise: RFC 9457 refusal (401 / 403 / 404 / 413 / 414 / 431 / 502 / 503 / 504)

Security decisions:

* **Authenticate before anything about targets is revealed**: an unknown target is a 404
  only to an authenticated agent, so target names cannot be probed anonymously.
* **The engine sees the raw request target** (path and query from the ASGI ``raw_path``
  and ``query_string``); it refuses every non-canonical path (``ambiguous-path``), and the
  broker forwards exactly that string, the credential's query parameter appended.
* **The decision event is durable before the request leaves**: ``Auditor.decision`` is
  awaited first; when the trail is unavailable the request is refused (503), never sent.
  The decision event records the path and the query's keys, not its values. The one
  exception is a target's opt-in ``pipeline_reads``: a GET or HEAD with no body, upgrade
  or method override is sent while its decision event commits, and nothing of the answer
  reaches the agent until the commit succeeded (503 if it failed).
* **Errors fail closed**: any unexpected exception is a 500 problem (or an aborted
  response), audited; a credential failure is a 401; the agent's token is re-checked
  during long transfers (:mod:`tether.proxy.http.forward`).
* **Certificate-bound tokens** use the client certificate of the TLS connection as the
  server reports it in the ASGI ``tls`` extension (``client_cert_chain``); without TLS
  there is no certificate and such tokens are refused.
* **WebSocket upgrades** are decided like any request (the policy sees the ``upgrade``
  header); a denied one is a 403. An allowed one is tunnelled
  (:mod:`tether.proxy.http.websocket`) when it reached the broker through
  :class:`tether.proxy.http.upgrade.UpgradeProtocol`; any other allowed upgrade is a 501,
  never forwarded half-way.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.approvals.frontend import agent_reason, prefer_wait, problem_members, wait_decided
from tether.approvals.model import AccessRequest, Conflict
from tether.audit.log import AuditUnavailable
from tether.audit.subject import Subject
from tether.identity.claims import Claims
from tether.identity.errors import CredentialError, TokenExpired, TokenInvalid
from tether.identity.issued import Presented
from tether.identity.replay import ReplayCacheFull
from tether.policy.httpmethods import (
    OVERRIDE_HEADERS,
    PATH_OVERRIDE_HEADERS,
    header_key,
    may_override_method,
)
from tether.policy.model import APPROVAL_REQUIRED, Decision
from tether.proxy.core import (
    APPROVAL_CONFLICT,
    INTERNAL_ERROR,
    Services,
    decide,
    policy_request,
    subject_of,
)
from tether.proxy.http import bodybind, refusals, websocket
from tether.proxy.http.auditlater import AuditLater
from tether.proxy.http.config import HttpProxyConfig
from tether.proxy.http.exchange import Exchange, quietly
from tether.proxy.http.flight import SingleFlight
from tether.proxy.http.forward import Plan
from tether.proxy.http.requestid import RequestIds
from tether.proxy.http.routing import Route, Router, query_keys
from tether.proxy.http.upstream import Origin, TlsContexts, UpstreamPool
from tether.vault.oauth2 import OAuth2Tokens
from tether.vault.target_specs import HttpTargetSpec
from tether.vault.targets import Target, TargetError

log = logging.getLogger(__name__)

_HIDDEN: Final = frozenset({b"authorization", b"dpop", b"cookie", b"proxy-authorization"})
_READS: Final = frozenset({"GET", "HEAD"})
_NOT_A_READ: Final = frozenset({"transfer-encoding", "upgrade", "expect"})


class HttpBroker:
    """The broker of one node: routes, upstream pool, OAuth token cache, target plans."""

    def __init__(
        self,
        services: Services,
        config: HttpProxyConfig,
        *,
        issuer: str,
        pool: UpstreamPool | None = None,
        oauth: OAuth2Tokens | None = None,
    ) -> None:
        self.services, self.config = services, config
        self.issuer = issuer
        self.router = Router(issuer=issuer, domain=config.domain, scheme=config.scheme)
        self.pool = pool or UpstreamPool(
            pool_size=config.upstream_pool_size,
            idle_timeout=config.upstream_idle_timeout,
            max_header_bytes=config.max_header_bytes,
        )
        self.oauth = oauth or OAuth2Tokens()
        self.tls = TlsContexts()
        self.audit_later = AuditLater()
        self.request_ids = RequestIds()
        # One store query per expired cache entry, however many requests need it at once.
        # A read in flight before a change through the store is not shared after it.
        targets, secrets, agents = services.targets, services.secrets, services.agents
        self.targets = SingleFlight(targets.get, lambda: targets.generation, targets.cached)
        self.secrets = SingleFlight(secrets.get, lambda: secrets.generation, secrets.cached)
        self.labels = SingleFlight(agents.get, peek=agents.cached)
        self._plans: dict[str, tuple[datetime, Plan]] = {}

    async def close(self) -> None:
        """Append the pending exchange events and close idle upstream connections; call it
        after the server stopped and before the audit trail closes."""
        await self.audit_later.close()
        await self.pool.close()

    async def handle(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request for ``route`` (never raises before the response started)."""
        request_id = self.request_ids.new()
        started = time.perf_counter()
        too_big = self._over_limits(route, scope["headers"])
        if too_big is not None:  # refused before any work on it: audited all the same
            anyone = Subject(source_ip=_client_ip(scope))
            await self._target_refused(route, scope, anyone, request_id, too_big[0],
                                       "request-too-large")  # fmt: skip
            await refusals.plain(*too_big, request_id)(scope, receive, send)
            return
        claims = await self._authenticate(route, scope, request_id, receive, send)
        if claims is None:
            return
        source_ip = _client_ip(scope)
        who = subject_of(claims, source_ip=source_ip)
        try:
            target = await self.targets.get(route.target)
        except TargetError as error:  # its stored row does not validate: fail closed, audited
            log.error("%s", error)
            await self._unusable_target(route, scope, who, request_id, receive, send)
            return
        except Exception as error:  # noqa: BLE001 - the store failed: refused, audited
            await self._undecided(error, route, scope, who, request_id, receive, send)
            return
        if target is None or not isinstance(target.spec, HttpTargetSpec):
            await self._unknown_target(route, scope, who, request_id, receive, send)
            return
        policy_headers = _policy_headers(scope["headers"])
        action = {"method": scope["method"], "path": route.request_target,
                  "headers": policy_headers}  # fmt: skip
        try:
            labels = await self.labels.get(claims.agent_id)
            request = policy_request(claims, labels, target, {"http": action},
                                     source_ip=source_ip)  # fmt: skip
            decision, pending = await self._decide(request, scope["headers"])
            if decision.decision == APPROVAL_REQUIRED:  # approval.bind_body reads the body
                bound = await bodybind.bind_body(self, request, route, target, who, decision,
                                                 scope, receive, send, request_id)  # fmt: skip
                if bound is None:
                    return
                decision, pending, receive = bound[0], bound[1] or pending, bound[2]
        except Exception as error:  # noqa: BLE001 - no decision could be made: refused
            await self._undecided(error, route, scope, who, request_id, receive, send)
            return
        if _waits(scope["headers"]):
            # Held up to a minute for an approval: the token may have been revoked, its
            # agent disabled or the token expired meanwhile (checked as a live tunnel is).
            try:
                await self._still_valid(claims)
            except CredentialError as error:
                await self._refused_audit(scope, route, error.reason, error.code, request_id)
                await refusals.credential_refused(error, request_id)(scope, receive, send)
                return
        if decision.allowed and _pipelined(target.spec, scope["method"], policy_headers,
                                           route.query):  # fmt: skip
            # A read: forwarded while its decision event commits, its answer held back
            # until the commit succeeded (Exchange.run); never an effect before the event.
            committed = asyncio.ensure_future(
                self._audit_decision(request, route, decision, who, started)
            )
            exchange = Exchange(self, route, target, self.plan(target), claims, who, decision,
                                committed=committed)  # fmt: skip
            await exchange.run(scope, receive, send, request_id, started)
            return
        if not await self._audit_decision(request, route, decision, who, started):
            await refusals.plain(503, refusals.AUDIT_UNAVAILABLE, request_id)(scope, receive, send)
            return
        if not decision.allowed:
            access = None if pending is None else problem_members(pending, self.issuer)
            await refusals.denied(decision, request_id, access)(scope, receive, send)
        elif "upgrade" in policy_headers:  # a WebSocket tunnel (tether.proxy.http.websocket)
            await websocket.upgrade(self, route, target, claims, who, decision,
                                    scope, receive, send, request_id)  # fmt: skip
        else:
            exchange = Exchange(self, route, target, self.plan(target), claims, who, decision)
            await exchange.run(scope, receive, send, request_id, started)

    async def _decide(
        self,
        request: dict[str, Any],
        headers: list[tuple[bytes, bytes]],
        body: bytes | None = None,
    ) -> tuple[Decision, AccessRequest | None]:
        """The decision with the grants held (tether.approvals); ``Prefer: wait=N`` waits
        for a raised access request to be decided, then decides again."""
        approvals = self.services.approvals
        if approvals is None:
            return decide(self.services, request), None
        reason = agent_reason(v.decode("latin-1") for n, v in headers if n == b"x-tether-reason")
        decision, pending = await approvals.decide(request, body=body, reason=reason)
        wait = prefer_wait(v.decode("latin-1") for n, v in headers if n == b"prefer")
        if pending is not None and wait > 0:
            await wait_decided(approvals, pending.id, wait)
            decision, pending = await approvals.decide(request, body=body, reason=reason)
        return decision, pending

    async def _still_valid(self, claims: Claims) -> None:
        """Raise :class:`CredentialError` when ``claims`` stopped being valid: expired,
        revoked, or its agent no longer active."""
        identity = self.services.identity
        if identity.clock().timestamp() >= claims.exp:
            raise TokenExpired("the access token expired while the request waited")
        await identity.check_live(claims)

    def _over_limits(
        self, route: Route, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, str] | None:
        config = self.config
        if len(route.request_target) > config.max_request_line:
            return 414, f"request target longer than {config.max_request_line} bytes"
        size = sum(len(name) + len(value) + 4 for name, value in headers)
        if len(headers) > config.max_headers or size > config.max_header_bytes:
            return 431, "request headers too large"
        return None

    async def _authenticate(
        self, route: Route, scope: Scope, request_id: str, receive: Receive, send: Send
    ) -> Claims | None:
        values = [v for n, v in scope["headers"] if n == b"authorization"]
        if not values:
            await self._refused_audit(scope, route, "no access token", "missing_token", request_id)
            await refusals.unauthenticated(request_id)(scope, receive, send)
            return None
        try:
            return await self._verify(route, scope, values)
        except CredentialError as error:
            await self._refused_audit(scope, route, error.reason, error.code, request_id)
            await refusals.credential_refused(error, request_id)(scope, receive, send)
        except ReplayCacheFull:
            await refusals.plain(503, "DPoP replay cache is full; try again shortly", request_id)(
                scope, receive, send
            )
        except Exception as error:  # the token could not be checked: refused, audited
            log.error("%s %s: the access token could not be checked", scope["method"],
                      route.target, exc_info=error)  # fmt: skip
            await self._refused_audit(scope, route, "the token could not be checked",
                                      INTERNAL_ERROR, request_id, status=500)  # fmt: skip
            await quietly(refusals.plain(500, "internal error; see the server log", request_id),
                          scope, receive, send)  # fmt: skip
        return None

    async def _verify(self, route: Route, scope: Scope, values: list[bytes]) -> Claims:
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        proofs = [v for n, v in scope["headers"] if n == b"dpop"]
        if len(values) > 1 or scheme.lower() not in ("dpop", "bearer") or not token.strip():
            raise TokenInvalid("use one Authorization: DPoP <token> header")
        if len(proofs) > 1:
            raise TokenInvalid("send at most one DPoP header")
        claims = await self.services.identity.authenticate(
            Presented(
                token=token.strip(),
                method=scope["method"],
                url=route.url,
                dpop=proofs[0].decode("latin-1") if proofs else None,
                peer_certificate_der=_peer_certificate(scope),
            )
        )
        if claims.cnf.jkt is not None and scheme.lower() != "dpop":
            raise TokenInvalid("a DPoP-bound token is sent with the DPoP scheme")
        return claims

    async def _refused_audit(
        self,
        scope: Scope,
        route: Route,
        reason: str,
        code: str,
        request_id: str,
        *,
        status: int = 401,
    ) -> None:
        auditor = self.services.auditor
        if auditor is None:
            return
        detail = {"error": code, "status": status, "request_id": request_id,
                  "method": scope["method"], "path": route.path}  # fmt: skip
        try:
            await auditor.token_refused(
                Subject(source_ip=_client_ip(scope)), reason=reason, audience=route.target,
                detail=detail,
            )  # fmt: skip
        except AuditUnavailable:
            log.error("audit trail unavailable; a refused credential went unrecorded")

    async def _audit_decision(
        self,
        request: dict[str, Any],
        route: Route,
        decision: Decision,
        who: Subject,
        started: float,
    ) -> bool:
        auditor = self.services.auditor
        if auditor is None:
            return True
        http = request["action"]["http"]
        shown = {**http, "path": route.path, "query_keys": query_keys(route.query)}
        self.audit_later.flush()  # pending exchange events join this decision's commit
        try:
            await auditor.decision(
                {**request, "action": {"http": shown}}, decision, who=who,
                duration_ms=(time.perf_counter() - started) * 1000,
            )  # fmt: skip
        except AuditUnavailable:
            log.error("audit trail unavailable: refusing %s %s", http["method"], route.target)
            return False
        return True

    async def _undecided(
        self,
        error: Exception,
        route: Route,
        scope: Scope,
        who: Subject,
        request_id: str,
        r: Receive,
        s: Send,
    ) -> None:
        """No decision could be made (the store failed while the agent's labels or its
        grants were read; an access request lost its race every time): refused, audited.
        A lost race is the agent's to retry (409); anything else is a 500."""
        if isinstance(error, Conflict):
            status, reason, detail = 409, APPROVAL_CONFLICT, str(error)
        else:
            log.error("%s %s: no decision could be made", scope["method"], route.target,
                      exc_info=error)  # fmt: skip
            status, reason, detail = 500, INTERNAL_ERROR, "internal error; see the server log"
        await self._target_refused(route, scope, who, request_id, status, reason)
        await quietly(refusals.plain(status, detail, request_id), scope, r, s)

    async def _unknown_target(
        self, route: Route, scope: Scope, who: Subject, request_id: str, r: Receive, s: Send
    ) -> None:
        await self._target_refused(route, scope, who, request_id, 404, "unknown-target")
        await refusals.plain(404, f"no HTTP target {route.target!r}", request_id)(scope, r, s)

    async def _unusable_target(
        self, route: Route, scope: Scope, who: Subject, request_id: str, r: Receive, s: Send
    ) -> None:
        await self._target_refused(route, scope, who, request_id, 502, "invalid-target")
        detail = f"the definition of target {route.target!r} is invalid; see the server log"
        await refusals.plain(502, detail, request_id)(scope, r, s)

    async def _target_refused(
        self, route: Route, scope: Scope, who: Subject, request_id: str, status: int, reason: str
    ) -> None:
        auditor = self.services.auditor
        if auditor is None:
            return
        try:
            await auditor.emit(auditor.http_exchange_event(
                who, target=route.target, method=scope["method"], path=route.path,
                status=status, decision="deny",
                detail={"reason": reason, "request_id": request_id},
            ))  # fmt: skip
        except AuditUnavailable:
            log.error("audit trail unavailable; a %s refusal went unrecorded", reason)

    def plan(self, target: Target) -> Plan:
        """How to reach ``target``, rebuilt when its spec changes."""
        cached = self._plans.get(target.name)
        if cached is not None and cached[0] == target.updated_at:
            return cached[1]
        spec = target.spec
        assert isinstance(spec, HttpTargetSpec)
        parts = urlsplit(spec.base_url)
        https = parts.scheme.lower() == "https"
        tls = self.tls.get(verify=spec.tls_verify, ca_bundle=spec.ca_bundle) if https else None
        if https and not spec.tls_verify:
            log.warning("target %s: upstream TLS verification is OFF (tls_verify: false)",
                        target.name)  # fmt: skip
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        plan = Plan(
            origin=Origin(host, port, tls, verified=spec.tls_verify or not https),
            base_path=parts.path.rstrip("/"),
            host=parts.netloc.rpartition("@")[2].encode("idna"),
            connect_timeout=spec.connect_timeout,
            read_timeout=spec.read_timeout,
            max_body=spec.max_request_body,
        )
        self._plans[target.name] = (target.updated_at, plan)
        return plan


def _waits(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the agent asked to wait for an approval (``Prefer: wait=N``)."""
    return prefer_wait(v.decode("latin-1") for n, v in headers if n == b"prefer") > 0


def _pipelined(
    spec: HttpTargetSpec, method: str, headers: Mapping[str, str], query: str = ""
) -> bool:
    """Whether a request may be forwarded while its decision event commits: the target opted
    in (``pipeline_reads``), the method is GET or HEAD, and nothing makes it more than a
    read: no body, no upgrade, no method-override header or ``_method`` parameter, no
    path-override header (which a target may obey)."""
    if not spec.pipeline_reads or method not in _READS or may_override_method(query):
        return False
    for name, value in headers.items():
        key = header_key(name)  # as the policy finds overrides
        if key in _NOT_A_READ or key in OVERRIDE_HEADERS or key in PATH_OVERRIDE_HEADERS:
            return False
        if key == "content-length" and value.strip(" \t") != "0":
            return False
    return True


def _policy_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The agent's headers for the policy (repeated names joined), credentials left out."""
    shown: dict[str, str] = {}
    for name, value in headers:
        if name in _HIDDEN:
            continue
        key, text = name.decode("latin-1"), value.decode("latin-1")
        shown[key] = f"{shown[key]}, {text}" if key in shown else text
    return shown


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _peer_certificate(scope: Scope) -> bytes | None:
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    return _pem_to_der(chain[0]) if chain else None


@lru_cache(maxsize=1024)
def _pem_to_der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def _both_framings(headers: list[tuple[bytes, bytes]]) -> bool:
    chunked = sized = False
    for name, _ in headers:  # ASGI names are lower case; no set built per request
        chunked = chunked or name == b"transfer-encoding"
        sized = sized or name == b"content-length"
    return chunked and sized


def _closing(send: Send) -> Send:
    """``send`` with ``Connection: close`` added to the response head."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), (b"connection", b"close")]
            message = {**message, "headers": headers}
        await send(message)

    return closing


class BrokerMiddleware:
    """ASGI middleware putting the broker's routes in front of the node's API.

    A request framed both by ``Transfer-Encoding`` and ``Content-Length`` (read chunked,
    as h11 does) closes its connection once answered (RFC 9112 section 6.3): a proxy in
    front of the node that framed it by ``Content-Length`` would otherwise have the rest
    of its body read here as a request of its own, on a connection it may share between
    agents.
    """

    def __init__(self, app: ASGIApp, broker: HttpBroker) -> None:
        self.app, self.broker = app, broker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if _both_framings(scope["headers"]):
                send = _closing(send)
            route = self.broker.router.route(scope)
            if route is not None:
                await self.broker.handle(route, scope, receive, send)
                return
        await self.app(scope, receive, send)
