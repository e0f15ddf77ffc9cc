"""WebSocket tunnels: an allowed upgrade request forwarded to its target, then bytes both ways.

After the broker authenticated the agent, decided the upgrade request like any request
(method ``GET``, the canonical path, the headers) and made the decision event durable::

    checks (GET, no body, a connection that can switch) → inject the credential
      → a fresh connection to the target (TLS as configured for it) → the upgrade request
      → 101: session.start → 101 to the agent → bytes both ways → session.end
      → any other answer: relayed as an ordinary response, audited as http.exchange

Security decisions:

* **A byte tunnel, unless a credential is injected.** The policy decides the upgrade
  request, which is the whole action; without an injected credential frames are not parsed
  or re-encoded, so subprotocols and extensions are negotiated end to end and a large
  message costs the memory of one read.
* **The header rules of every request apply** (:mod:`tether.proxy.http.headers`): the
  agent's credentials, other targets' cookies and hop-by-hop headers never reach the
  target; the target credential is injected last; on the 101, hop-by-hop headers and any
  header carrying the credential are dropped and the broker sets ``Upgrade`` and
  ``Connection`` itself.
* **A fresh connection per tunnel**, never taken from nor returned to the keep-alive pool.
* **With an injected credential, the target's frames are masked** (DESIGN invariant 2: a
  target that echoes the upgrade request's headers or the credential in a message, an echo
  server or a debug endpoint, must not show it to the agent). The target → agent direction
  is read frame by frame (:mod:`tether.proxy.http.wsframes`): headers pass unchanged, each
  message's payload (its fragments together) and each control frame's payload is masked
  as response bodies are (:mod:`tether.proxy.http.scrub`: same length, so every header
  stays right), nothing is held past a message's end. The agent → target direction stays a
  byte copy. Compression would hide the secret, so no extension is offered
  (``Sec-WebSocket-Extensions`` is not forwarded); a 101 selecting one anyway is answered
  502 (no tunnel), and a frame with an RSV bit, a masked frame or invalid framing ends the
  tunnel (``session.end`` says why). ``session.end`` records ``credential_masked``. A target
  that does not switch has its answer's body scrubbed like any other.
* **Only a real WebSocket handshake opens a tunnel**: the target's 101 must name
  ``Upgrade: websocket`` and carry the ``Sec-WebSocket-Accept`` derived from the agent's
  key (RFC 6455 section 4.2.2). A target that answers 101 without switching would
  otherwise let the agent send raw HTTP requests on a connection the policy never
  decided (request smuggling through the tunnel).
* **A tunnel lives no longer than its token**: every ``LIVE_CHECK_INTERVAL`` the token is
  re-checked (revocation, agent state) and its expiry compared; either ends the tunnel by
  closing both connections (the broker never writes frames of its own, so no close frame).
  The node stopping ends it too.
* **Audited, fail closed**: ``session.start`` (request id, path, rule, policy version) is
  durable before the agent gets its 101; when the trail is unavailable the tunnel is
  refused (503). ``session.end`` records the bytes each way, the duration and the reason.
* **Stalls are bounded**: a write to the agent waits at most ``client_send_timeout``, to the
  target at most its ``read_timeout``; reads have no limit (an idle WebSocket is normal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from starlette.types import Receive, Scope, Send

from tether.audit.log import AuditUnavailable
from tether.audit.subject import Subject
from tether.audit.writers import Position
from tether.identity.claims import Claims
from tether.identity.errors import CredentialError
from tether.policy.model import Decision
from tether.proxy.http import handshake, refusals, scrub, wsframes
from tether.proxy.http.decode import BodyDecoder, decoding
from tether.proxy.http.exchange import target_refusal
from tether.proxy.http.forward import LIVE_CHECK_INTERVAL, Outcome
from tether.proxy.http.headers import request_headers, response_headers
from tether.proxy.http.routing import Route, query_keys
from tether.proxy.http.scrub import Masker, masker_for
from tether.proxy.http.upgrade import EXTENSION, READ_CHUNK, Switched, Upgrade
from tether.proxy.http.upstream import Connection, Header, Response, UpstreamError
from tether.vault.http_inject import Injection, InjectionError, injection_for
from tether.vault.target_specs import HttpTargetSpec
from tether.vault.targets import Target

if TYPE_CHECKING:
    from tether.proxy.http.broker import HttpBroker

log = logging.getLogger(__name__)

PROTOCOL: Final = "websocket"


async def upgrade(
    broker: HttpBroker,
    route: Route,
    target: Target,
    claims: Claims,
    who: Subject,
    decision: Decision,
    scope: Scope,
    receive: Receive,
    send: Send,
    request_id: str,
) -> None:
    """An allowed upgrade request: a WebSocket tunnel, or 501 for any other protocol."""
    switch = (scope.get("extensions") or {}).get(EXTENSION)
    if not isinstance(switch, Upgrade):
        detail = "only WebSocket upgrades (Connection: upgrade, Upgrade: websocket) are tunnelled"
        await refusals.plain(501, detail, request_id)(scope, receive, send)
        return
    tunnel = Tunnel(broker, route, target, claims, who, decision, request_id)
    await tunnel.run(switch, scope, receive, send)


class Tunnel:
    """One upgrade request, and the tunnel when the target switches."""

    def __init__(
        self,
        broker: HttpBroker,
        route: Route,
        target: Target,
        claims: Claims,
        who: Subject,
        decision: Decision,
        request_id: str,
    ) -> None:
        self.broker, self.route, self.target = broker, route, target
        self.claims, self.who, self.decision, self.request_id = claims, who, decision, request_id
        self.plan = broker.plan(target)
        self.out = Outcome()
        self.started = time.perf_counter()
        self.session = False  # session.start written: the end goes to session.end
        self.frames: wsframes.FrameMasker | None = None  # the credential masked in frames

    async def run(self, switch: Upgrade, scope: Scope, receive: Receive, send: Send) -> None:
        refusal: tuple[int, str] | None = None
        connection: Connection | None = None
        try:
            accept = handshake.check(scope)
            injection = await self._injection()
            connection, response = await self._handshake(injection, scope, accept)
            self.out.status = response.status
            masker = masker_for(injection.secrets)
            shown = response_headers(
                response.headers, self.target.name, path_prefix=self.route.path_prefix,
                secrets=() if masker is None else masker.needles, base=self.plan.base,
            )  # fmt: skip
            shown.append((refusals.REQUEST_ID.lower().encode(), self.request_id.encode()))
            if response.status == 101:
                if masker is not None:
                    self.frames = _frames(masker, response.headers)
                await self._tunnel(switch, connection, shown)
            else:
                if response.status == 401:
                    injection.refused(self.broker.oauth)
                decoder = None
                if masker is not None:
                    why = scrub.unscannable(b"GET", response.status, response.headers)
                    if why is not None:
                        raise UpstreamError(why)  # the connection is closed below
                    decoder, shown = decoding(response.headers, shown, self.out.extra)
                await self._relay(connection, send, shown, masker, decoder)
        except handshake.BadUpgrade as error:
            refusal = (400, str(error))
        except (InjectionError, UpstreamError) as error:
            refusal = target_refusal(error, self.out)
        except AuditUnavailable:
            refusal = (503, refusals.AUDIT_UNAVAILABLE)
        except (OSError, TimeoutError) as error:
            self.out.error = f"the agent's connection failed: {type(error).__name__}"
        finally:
            if connection is not None:
                connection.close()
            if refusal is not None:
                self.out.error = refusal[1]
                if not self.out.started:
                    self.out.status = refusal[0]
                    with contextlib.suppress(OSError):
                        await refusals.plain(refusal[0], refusal[1], self.request_id)(
                            scope, receive, send
                        )
            if not self.session:
                self._audit_exchange()

    async def _injection(self) -> Injection:
        spec = self.target.spec
        assert isinstance(spec, HttpTargetSpec)
        broker = self.broker
        return await injection_for(spec.credential, broker.secrets, broker.oauth,
                                   self.plan.origin.tls)  # fmt: skip

    async def _handshake(
        self, injection: Injection, scope: Scope, accept: bytes
    ) -> tuple[Connection, Response]:
        """The upgrade request on a fresh connection, and the target's answer head."""
        headers = request_headers(scope["headers"], self.target.name,
                                  injected=injection.header_names)  # fmt: skip
        headers.extend(injection.headers)
        if injection.secrets:  # a refused upgrade's body is relayed scrubbed: uncoded;
            headers = scrub.request_headers(headers)  # the frames are masked: uncompressed
            headers = handshake.without_extensions(headers)
        headers.extend(((b"connection", b"upgrade"), (b"upgrade", b"websocket")))
        query = injection.query(self.route.query)
        path = self.plan.base_path + self.route.path + ("?" + query if query else "")
        plan = self.plan
        connection = await self.broker.pool.open_fresh(plan.origin, plan.connect_timeout)
        try:
            await connection.send_head(b"GET", path.encode("latin-1"), [(b"host", plan.host),
                                                                        *headers])  # fmt: skip
            await connection.end_body()
            response = await handshake.answer(connection, plan.read_timeout, accept)
        except OSError as error:
            connection.close()
            reason = f"connection to the target failed: {type(error).__name__}"
            raise UpstreamError(reason) from None
        except BaseException:
            connection.close()
            raise
        return connection, response

    async def _relay(
        self,
        connection: Connection,
        send: Send,
        headers: list[Any],
        masker: Masker | None,
        decoder: BodyDecoder | None,
    ) -> None:
        """A target that did not switch: its answer goes to the agent as a response, the
        credential masked in its body (decoded first when the target coded it)."""
        limit = self.broker.config.client_send_timeout
        async with asyncio.timeout(limit):
            await send({"type": "http.response.start", "status": self.out.status,
                        "headers": headers})  # fmt: skip
        self.out.started = True
        scrubber = None if masker is None else masker.scrubber()
        try:
            async for chunk in connection.body(self.plan.read_timeout):
                for piece in (chunk,) if decoder is None else decoder.feed(chunk):
                    if scrubber is not None:
                        piece = scrubber.feed(piece)
                    if not piece:
                        continue
                    self.out.bytes_out += len(piece)
                    async with asyncio.timeout(limit):
                        await send({"type": "http.response.body", "body": piece,
                                    "more_body": True})  # fmt: skip
            if decoder is not None:
                decoder.finish()
            last = b"" if scrubber is None else scrubber.flush()
            self.out.bytes_out += len(last)
            async with asyncio.timeout(limit):
                await send({"type": "http.response.body", "body": last, "more_body": False})
        finally:
            if scrubber is not None and scrubber.count:
                self.out.extra["credential_masked"] = scrubber.count

    async def _tunnel(self, switch: Upgrade, connection: Connection, headers: list[Any]) -> None:
        chosen = b",".join(v for n, v in headers if n == b"sec-websocket-protocol")
        await self._audit_start(chosen.decode("latin-1"))
        self.session = True
        reason, why = "error", "the agent left before the switch"
        try:
            agent = await switch.accept(headers)
            self.out.started = True
            reason, why = await self._pump(agent, connection, switch.stopping)
        except (OSError, ValueError) as error:
            why = f"{why}: {error}" if isinstance(error, ValueError) else why
        finally:
            connection.close()
            await self._audit_end(reason, why)

    async def _pump(
        self, agent: Switched, connection: Connection, stopping: asyncio.Event
    ) -> tuple[str, str]:
        """Bytes both ways until a side closes or the watch ends the tunnel: (reason, why)."""
        early, _closed = connection.h11.trailing_data
        target_timeout = self.plan.read_timeout
        agent_timeout = self.broker.config.client_send_timeout
        to_target = asyncio.create_task(_copy(agent.reader, connection.writer, agent.early,
                                              self._count_in, target_timeout))  # fmt: skip
        masked = None if self.frames is None else self.frames.feed
        to_agent = asyncio.create_task(_copy(connection.reader, agent.writer, bytes(early),
                                             self._count_out, agent_timeout, masked))  # fmt: skip
        watch = asyncio.create_task(self._watch(stopping))
        tasks = (to_target, to_agent, watch)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            agent.writer.close()
        if watch.done() and not watch.cancelled():
            return watch.result()
        for task, side in ((to_target, "agent"), (to_agent, "target")):
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is None:
                    return "closed", f"closed by the {side}"
                if isinstance(error, wsframes.FrameError):
                    return "error", f"the target's frames cannot be masked: {error}"
                stalled = "stalled" if isinstance(error, TimeoutError) else "failed"
                towards = "target" if task is to_target else "agent"
                return "error", f"the connection to the {towards} {stalled}"
        return "error", "the tunnel ended"

    async def _watch(self, stopping: asyncio.Event) -> tuple[str, str]:
        identity = self.broker.services.identity
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LIVE_CHECK_INTERVAL):
                    await stopping.wait()
                    return "shutdown", "the node is stopping"
            if identity.clock().timestamp() >= self.claims.exp:
                return "expired", "the access token expired"
            try:
                await identity.check_live(self.claims)
            except CredentialError as error:
                return "revoked", f"token no longer valid: {error.reason}"

    def _count_in(self, size: int) -> None:
        self.out.bytes_in += size

    def _count_out(self, size: int) -> None:
        self.out.bytes_out += size

    # --- audit -----------------------------------------------------------------------------

    def _detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "request_id": self.request_id,
            "path": self.route.path,
            "query_keys": query_keys(self.route.query),
            "rule": self.decision.rule,
            "policy_version": self.decision.policy_version,
        }
        if not self.plan.origin.verified:
            detail["tls_verify"] = False
        return detail

    async def _audit_start(self, subprotocol: str) -> None:
        auditor = self.broker.services.auditor
        if auditor is None:
            return
        detail = self._detail()
        if subprotocol:
            detail["subprotocol"] = subprotocol
        self.broker.audit_later.flush()
        await auditor.session_start(self.who, protocol=PROTOCOL, target=self.target.name,
                                    detail=detail)  # fmt: skip

    async def _audit_end(self, reason: str, why: str) -> None:
        auditor = self.broker.services.auditor
        if auditor is None:
            return
        detail = {**self._detail(), "ended": why}
        if self.frames is not None and self.frames.count:
            detail["credential_masked"] = self.frames.count
        try:
            await auditor.session_end(
                self.who, protocol=PROTOCOL, target=self.target.name,
                duration_ms=(time.perf_counter() - self.started) * 1000,
                bytes_in=self.out.bytes_in, bytes_out=self.out.bytes_out, reason=reason,
                detail=detail,
            )  # fmt: skip
        except AuditUnavailable:
            log.error("audit trail unavailable: the end of tunnel %s unrecorded", self.request_id)

    def _audit_exchange(self) -> None:
        auditor = self.broker.services.auditor
        if auditor is None:
            return
        detail = {**self._detail(), "upgrade": PROTOCOL, "upstream_connection": "new",
                  **self.out.extra}  # fmt: skip
        del detail["path"], detail["rule"]
        if self.out.error is not None:
            detail["error"] = self.out.error
        who, out, decision, route = self.who, self.out, self.decision, self.route
        target = self.target.name
        duration_ms = (time.perf_counter() - self.started) * 1000

        def append() -> asyncio.Future[Position]:
            return auditor.log.submit(auditor.http_exchange_event(
                who, target=target, method="GET", path=route.path, status=out.status,
                bytes_in=out.bytes_in, bytes_out=out.bytes_out, duration_ms=duration_ms,
                decision=decision.decision, rule=decision.rule, detail=detail,
            ))  # fmt: skip

        self.broker.audit_later.add(append, f"upgrade {self.request_id} on {target}")


def _frames(masker: Masker, headers: Sequence[Header]) -> wsframes.FrameMasker:
    """The masking of the target's frames; UpstreamError (502, no tunnel) when its 101
    selected an extension (none was offered): coded payloads cannot be scanned."""
    chosen = handshake.extensions(headers)
    if chosen is not None:
        raise UpstreamError(
            f"the target's 101 selected the WebSocket extension {chosen!r}, not offered: "
            "its frames could not be scanned for the credential"
        )
    return wsframes.FrameMasker(masker)


async def _copy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
    count: Callable[[int], None],
    stall: float,
    masked: Callable[[bytes], bytes] | None = None,
) -> None:
    """Bytes from ``reader`` to ``writer`` (``first`` before them) until end of stream,
    through ``masked`` when given (its FrameError ends the copy)."""
    data = first
    while True:
        if masked is not None and data:
            data = masked(data)
        if data:
            count(len(data))
            writer.write(data)
            async with asyncio.timeout(stall):
                await writer.drain()
        data = await reader.read(READ_CHUNK)
        if not data:
            return
