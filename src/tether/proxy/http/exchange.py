"""One allowed request: credential injection, forwarding, response, and its audit event.

Security decisions:

* **The credential is injected last**, into headers already filtered
  (:func:`tether.proxy.http.headers.request_headers`), and never leaves on the response
  side: response headers holding it are dropped, the body is streamed with every form of
  it masked (:mod:`tether.proxy.http.scrub`; a gzip or deflate body is decoded first,
  :mod:`tether.proxy.http.decode`; another coding or a partial body, which cannot be
  scanned, is a 502), refusals are Tether's own texts, and the audit event records header
  names and sizes through the redactor, never the value (``credential_masked``: how many
  occurrences were masked).
* **Methods the broker cannot forward are refused (501)**, whatever the policy allowed:
  ``CONNECT`` (an authority, not a path, RFC 9110 section 9.3.6; a 2xx would switch the
  target's connection to a tunnel) and ``TRACE`` when a credential is injected (RFC 9110
  section 9.3.8: its answer echoes the request, credential included), and any method not
  written in upper case: the policy compares methods case-sensitively (spec 5.1), but
  Django, Werkzeug, Rack and others upper-case them, so ``delete`` allowed by a ``*`` rule
  would be a ``DELETE`` that a deny rule never saw.
* **Upstream failures are refusals**: 502 (unreachable, TLS failure, broken framing,
  unusable credential) or 504 (timeout), audited with Tether's reason; the target's own
  error body is never read into a refusal.
* **The exchange event is always written**, whatever happened (in ``finally``), with the
  status (None when the target never answered), sizes, duration, the decision and rule,
  the policy version, the query's keys and whether upstream TLS was verified.
* **A pipelined read answers nothing before its decision event committed**: with
  ``committed`` (the broker's ``pipeline_reads``), the response head from the target is
  read, then the commit awaited before the first byte goes to the agent; a refusal waits
  for it too. A failed commit is a 503 and the target's answer is dropped with its
  connection. The exchange event is appended only after the commit settled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from tether.audit.subject import Subject
from tether.audit.writers import Position
from tether.identity.claims import Claims
from tether.identity.errors import CredentialError
from tether.policy.model import Decision
from tether.proxy.http import refusals, scrub
from tether.proxy.http.decode import decoding
from tether.proxy.http.forward import (
    BodyTooLarge,
    ClientGone,
    ClientLimits,
    ClientStalled,
    Forwarder,
    Outcome,
    Plan,
)
from tether.proxy.http.headers import request_headers, response_headers
from tether.proxy.http.routing import Route, query_keys
from tether.proxy.http.scrub import masker_for
from tether.proxy.http.upstream import UpstreamError, UpstreamTimeout
from tether.vault.http_inject import NO_INJECTION, InjectionError, injection_for
from tether.vault.target_specs import HttpTargetSpec
from tether.vault.targets import Target

if TYPE_CHECKING:
    from tether.proxy.http.broker import HttpBroker

log = logging.getLogger(__name__)


class Exchange:
    """Forwards one allowed request and audits it."""

    def __init__(
        self,
        broker: HttpBroker,
        route: Route,
        target: Target,
        plan: Plan,
        claims: Claims,
        who: Subject,
        decision: Decision,
        *,
        committed: asyncio.Future[bool] | None = None,
    ) -> None:
        self.broker, self.route, self.target, self.plan = broker, route, target, plan
        self.claims, self.who, self.decision = claims, who, decision
        self.committed = committed
        self.out = Outcome()

    async def run(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, started: float
    ) -> None:
        refusal: tuple[int, str] | None = None
        try:
            await self._forward(scope, receive, send, request_id)
        except BodyTooLarge:
            refusal = (413, f"request body larger than {self.plan.max_body} bytes")
        except (InjectionError, UpstreamError) as error:
            refusal = target_refusal(error, self.out)
        except ClientStalled as error:
            refusal = (408, str(error))
        except ClientGone as error:
            self.out.error = str(error)
        except CredentialError as error:  # revoked during a long transfer
            self.out.error = f"token no longer valid: {error.reason}"
        except AuditGateClosed:
            refusal = (503, refusals.AUDIT_UNAVAILABLE)
        except NotForwarded as error:
            refusal = (501, str(error))
        except Exception as error:  # the store failed (the credential's secret): fail closed
            log.error("%s %s: the exchange failed", scope["method"], self.target.name,
                      exc_info=error)  # fmt: skip
            self.out.extra["internal_error"] = type(error).__name__
            refusal = (500, "internal error; see the server log")
        finally:
            try:
                if not await self._committed():
                    refusal = (503, refusals.AUDIT_UNAVAILABLE)
                if refusal is not None:
                    self.out.error = refusal[1]
                    if not self.out.started:
                        self.out.status = refusal[0]
                        await quietly(refusals.plain(refusal[0], refusal[1], request_id),
                                       scope, receive, send)  # fmt: skip
            finally:  # recorded even if cancelled again while the refusal goes out
                self._audit(scope, request_id, started)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        spec = self.target.spec
        assert isinstance(spec, HttpTargetSpec)
        broker = self.broker
        method_name = scope["method"]
        folded = method_name.upper()
        if folded != method_name:  # a target may fold it: "delete" would be its DELETE
            raise NotForwarded("methods are forwarded in upper case only")
        if folded == "CONNECT":
            raise NotForwarded("CONNECT is not forwarded to targets")
        declared = _content_length(scope["headers"])
        if (
            self.plan.max_body is not None
            and declared is not None
            and declared > self.plan.max_body
        ):
            raise BodyTooLarge
        injection = await injection_for(
            spec.credential, broker.secrets, broker.oauth, self.plan.origin.tls
        )
        if folded == "TRACE" and injection is not NO_INJECTION:
            raise NotForwarded("TRACE is not forwarded to a target with a credential")
        headers = request_headers(scope["headers"], self.target.name,
                                  injected=injection.header_names)  # fmt: skip
        headers.extend(injection.headers)
        masker = masker_for(injection.secrets)
        if masker is not None:  # a body that can be scanned: whole and uncoded
            headers = scrub.request_headers(headers)
        query = injection.query(self.route.query)
        target = self.route.path + ("?" + query if query else "")
        limits = ClientLimits(broker.config.client_body_timeout, broker.config.client_send_timeout)
        identity = broker.services.identity

        async def live() -> None:
            await identity.check_live(self.claims)

        forwarder = Forwarder(broker.pool, self.plan, limits, live)
        method = scope["method"].encode("ascii")
        connection, response = await forwarder.open(
            method, target.encode("latin-1"), headers, receive, self.out
        )
        if not await self._committed():
            connection.close()  # its answer is dropped unread
            raise AuditGateClosed
        self.out.status = response.status
        if response.status == 401:
            injection.refused(broker.oauth)
        if masker is not None:
            why = scrub.unscannable(method, response.status, response.headers)
            if why is not None:
                connection.close()  # its body is dropped unread
                raise UpstreamError(why)
        shown = response_headers(
            response.headers, self.target.name, path_prefix=self.route.path_prefix,
            secrets=() if masker is None else masker.needles,  # every form of the secrets
            base=self.plan.base,
        )  # fmt: skip
        decoder = None
        if masker is not None:  # a coded answer: the agent gets it uncoded, masked
            decoder, shown = decoding(response.headers, shown, self.out.extra)
        self.out.response_headers = shown
        shown.append((refusals.REQUEST_ID.lower().encode(), request_id.encode()))
        scrubber = None if masker is None else masker.scrubber()
        try:
            await forwarder.stream_response(connection, send, shown, self.out, scrubber, decoder)
        finally:
            if scrubber is not None and scrubber.count:
                self.out.extra["credential_masked"] = scrubber.count

    async def _committed(self) -> bool:
        """Whether the decision event is committed: at once unless pipelined, else once its
        commit settled (shielded: a request cancelled meanwhile does not withdraw it)."""
        if self.committed is None:
            return True
        try:
            return await asyncio.shield(self.committed)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in auditing: fail closed
            log.exception("auditing the decision of a pipelined read failed")
            return False

    def _audit(self, scope: Scope, request_id: str, started: float) -> None:
        auditor = self.broker.services.auditor
        if auditor is None:
            return
        detail: dict[str, Any] = {
            "request_id": request_id,
            "query_keys": query_keys(self.route.query),
            "policy_version": self.decision.policy_version,
            "upstream_connection": "reused" if self.out.reused else "new",
            **self.out.extra,
        }
        if not self.plan.origin.verified:
            detail["tls_verify"] = False
        if self.out.error is not None:
            detail["error"] = self.out.error
        who, target, method, path = self.who, self.target.name, scope["method"], self.route.path
        status, out, decision = self.out.status, self.out, self.decision
        duration_ms = (time.perf_counter() - started) * 1000

        def append() -> asyncio.Future[Position]:
            return auditor.log.submit(auditor.http_exchange_event(
                who, target=target, method=method, path=path, status=status,
                bytes_in=out.bytes_in, bytes_out=out.bytes_out, duration_ms=duration_ms,
                decision=decision.decision, rule=decision.rule, detail=detail,
            ))  # fmt: skip

        self.broker.audit_later.add(append, f"exchange {request_id} on {target}")


class NotForwarded(Exception):
    """A method the broker never forwards (501)."""


class AuditGateClosed(Exception):
    """A pipelined read's decision event did not commit: its answer is never delivered."""


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


async def quietly(response: Any, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        await response(scope, receive, send)
    except OSError:
        log.debug("the agent left before its refusal was sent")


def target_refusal(error: InjectionError | UpstreamError, out: Outcome) -> tuple[int, str]:
    """The refusal for a request the target side failed: its credential could not be
    injected (the reason goes to the audit record only), or the target timed out or failed."""
    if isinstance(error, InjectionError):
        out.extra["credential_error"] = str(error)
        return 502, "the target's credential is not usable; see the audit trail"
    if isinstance(error, UpstreamTimeout):
        return 504, f"the target did not answer in time: {error}"
    return 502, f"the target failed: {error}"
