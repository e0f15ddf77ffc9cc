"""The typed audit API every part of Tether emits through.

Front-ends and the API call one semantic method per fact (:class:`Auditor`), never a
logger: ``session_start``, ``session_end``, ``decision``, ``command``, ``file_transfer``,
``sql_statement``, ``mcp_call``, ``token_issued``, ``token_refused``, ``revocation``,
``admin_change``, ``approval``. Each builds one :class:`~tether.audit.events.AuditEvent`,
redacts it, appends it durably and returns its ``seq``. An HTTP exchange's event is built
by ``http_exchange_event`` and appended with ``emit`` (or queued without waiting, after
the response, with ``AuditLog.submit``). Who acted is a :class:`Subject`, built once per
session from the credential.

Security decisions:

* **Committed before the effect.** Every method returns only after the event's
  transaction has committed (:class:`~tether.audit.log.AuditLog`); a front-end awaits it
  *before* it returns the action's result to the agent, and when it raises
  :class:`~tether.audit.log.AuditUnavailable` the front-end refuses the action instead.
  A decision is audited before it is enforced, allowed or not.
* **Redaction cannot be skipped**: the methods take raw protocol values (headers, SQL
  with its parameters, tool arguments) and redact them here (:mod:`tether.audit.redact`);
  every other string of the event, ``detail`` included, still passes through the
  redactor's shape and name rules. :meth:`Auditor.emit`, for events built elsewhere,
  redacts ``action``, ``detail``, ``target`` and ``reason`` the same way.
* **Actions are summarised, never stored whole**: an HTTP exchange records method, path,
  status, sizes and headers, not bodies; a command records the command line and its exit
  status, not its output (recordings keep output, under their own cap).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from tether.audit.events import AuditEvent
from tether.audit.log import AuditLog
from tether.audit.redact import Redactor
from tether.audit.subject import Subject, id_of, object_of, text_of

__all__ = ["Auditor", "Subject"]

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
_ADMIN_DECISIONS: Final = {"success": "allow", "refused": "deny", "denied": "deny"}


class Auditor:
    """Builds, redacts and durably appends audit events; each method returns the ``seq``."""

    def __init__(
        self,
        log: AuditLog,
        redactor: Redactor | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.log = log
        self.redactor = redactor or Redactor()
        self._clock = clock

    # --- generic --------------------------------------------------------------------------

    async def emit(self, event: AuditEvent) -> int:
        """Append an event built elsewhere, after redacting its free-form parts."""
        redact = self.redactor
        action = redact.event_json(event.action, "action")
        detail = redact.event_json(event.detail, "detail")
        target = None if event.target is None else redact.text(event.target)
        reason = None if event.reason is None else redact.text(event.reason)
        if (
            action is event.action
            and detail is event.detail
            and target is event.target
            and reason is event.reason
        ):  # already clean (a cached, cleaned action): no copy, no second validation
            return await self._append(event)
        cleaned = dataclasses.replace(event, action=action, detail=detail, target=target,
                                      reason=reason)  # fmt: skip
        return await self._append(cleaned)

    def _event(
        self,
        kind: str,
        who: Subject,
        *,
        action: Mapping[str, Any],
        detail: Mapping[str, Any] | None = None,
        target: str | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> AuditEvent:
        redact = self.redactor
        return AuditEvent(
            kind=kind,
            time=self._clock(),
            agent=who.agent,
            runtime=who.runtime,
            task=who.task,
            user=who.user,
            actor_chain=who.actor_chain,
            source_ip=who.source_ip,
            session_id=who.session_id,
            target=None if target is None else redact.text(target),
            reason=None if reason is None else redact.text(reason),
            action=redact.event_json(action, "action"),
            detail=redact.event_json(detail or {}, "detail"),
            **fields,
        )

    async def _record(self, kind: str, who: Subject, **fields: Any) -> int:
        """:meth:`_event`'s event, appended; its ``seq``."""
        return (await self.log.append_position(self._event(kind, who, **fields)))[0]

    async def _append(self, event: AuditEvent) -> int:
        return (await self.log.append_position(event))[0]

    # --- sessions -------------------------------------------------------------------------

    async def session_start(
        self, who: Subject, *, protocol: str, target: str, detail: Mapping[str, Any] | None = None
    ) -> int:
        """A session through a front-end began (an SSH or PostgreSQL login, an MCP session)."""
        return await self._record(
            "session.start", who, target=target, action={"protocol": protocol}, detail=detail
        )

    async def session_end(
        self,
        who: Subject,
        *,
        protocol: str,
        target: str,
        duration_ms: float,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
        reason: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """A session ended; ``reason`` says how (``closed``, ``revoked``, ``error``...)."""
        return await self._record(
            "session.end", who, target=target, action={"protocol": protocol}, reason=reason,
            duration_ms=duration_ms, bytes_in=bytes_in, bytes_out=bytes_out, detail=detail,
        )  # fmt: skip

    # --- decisions ------------------------------------------------------------------------

    async def decision(
        self,
        request: Mapping[str, Any],
        decision: Any,
        *,
        who: Subject | None = None,
        duration_ms: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """A policy decision on ``request`` (the policy request object); ``decision`` is a
        :class:`tether.policy.model.Decision` or its ``to_dict()``. ``who`` defaults to
        :meth:`Subject.from_request`; pass it to add the session and the actor chain.
        ``extra`` goes into ``detail`` as well."""
        verdict = decision.to_dict() if hasattr(decision, "to_dict") else dict(decision)
        detail = {"detail": verdict["detail"]} if verdict.get("detail") else {}
        detail.update(extra or {})
        return await self._record(
            "decision",
            who or Subject.from_request(request),
            target=id_of(request.get("target"), "name"),
            action=self._request_action(object_of(request.get("action"))),
            decision=text_of(verdict.get("decision")),
            rule=text_of(verdict.get("rule")),
            reason=text_of(verdict.get("reason")),
            policy_version=text_of(verdict.get("policy_version")),
            duration_ms=duration_ms,
            detail=detail or None,
        )

    def _request_action(self, action: Mapping[str, Any]) -> dict[str, Any]:
        """A request's ``action`` with its protocol-specific secrets redacted first."""
        cleaned: dict[str, Any] = {}
        for kind, body in action.items():
            body = dict(object_of(body))
            if kind == "http" and "headers" in body:
                body["headers"] = self.redactor.headers(object_of(body["headers"]))
            if kind == "sql" and isinstance(body.get("query"), str):
                body["query"] = self.redactor.sql(body["query"])
            cleaned[kind] = body
        return cleaned

    # --- actions --------------------------------------------------------------------------

    def http_exchange_event(
        self,
        who: Subject,
        *,
        target: str,
        method: str,
        path: str,
        status: int | None,
        request_headers: Headers | None = None,
        response_headers: Headers | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
        duration_ms: float | None = None,
        decision: str | None = None,
        rule: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """One HTTP request forwarded to ``target`` and its response (``status`` None when
        the upstream never answered), as an event: append it with :meth:`emit`, or queue it
        without waiting with :meth:`AuditLog.submit`. Bodies are not recorded, only their
        sizes."""
        action: dict[str, Any] = {"method": method, "path": path, "status": status}
        if request_headers is not None:
            action["request_headers"] = self.redactor.headers(request_headers)
        if response_headers is not None:
            action["response_headers"] = self.redactor.headers(response_headers)
        return self._event(
            "http.exchange", who, target=target, action=action, decision=decision, rule=rule,
            bytes_in=bytes_in, bytes_out=bytes_out, duration_ms=duration_ms, detail=detail,
        )  # fmt: skip

    async def command(
        self,
        who: Subject,
        *,
        target: str,
        command: str,
        exit_status: int | None = None,
        bytes_out: int | None = None,
        duration_ms: float | None = None,
        decision: str | None = None,
        rule: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """An SSH command run on ``target`` (``exit_status`` None while unknown)."""
        action = {"command": command, "exit_status": exit_status}
        return await self._record(
            "ssh.command", who, target=target, action=action, decision=decision, rule=rule,
            bytes_out=bytes_out, duration_ms=duration_ms, detail=detail,
        )  # fmt: skip

    async def file_transfer(
        self,
        who: Subject,
        *,
        target: str,
        op: str,
        path: str,
        size: int | None = None,
        sha256: str | None = None,
        to: str | None = None,
        duration_ms: float | None = None,
        decision: str | None = None,
        rule: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """A file operation (``read``, ``write``, ``list``, ``delete``, ``rename``)."""
        action: dict[str, Any] = {"op": op, "path": path, "size": size, "sha256": sha256}
        if to is not None:
            action["to"] = to
        # Bytes leave the target on a read and enter it on a write.
        read = op == "read"
        return await self._record(
            "file.transfer", who, target=target, action=action, decision=decision, rule=rule,
            duration_ms=duration_ms, detail=detail,
            bytes_out=size if read else None, bytes_in=None if read else size,
        )  # fmt: skip

    async def sql_statement(
        self,
        who: Subject,
        *,
        target: str,
        query: str,
        params: Sequence[Any] = (),
        database: str | None = None,
        rows: int | None = None,
        duration_ms: float | None = None,
        error: str | None = None,
        decision: str | None = None,
        rule: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """A SQL statement (with its bound ``params``, extended protocol) on ``target``."""
        text, clean_params = self.redactor.sql_with_params(query, params)
        action: dict[str, Any] = {"query": text, "database": database}
        if params:
            action["params"] = clean_params
        if error is not None:
            action["error"] = error
        return await self._record(
            "sql.statement", who, target=target, action=action, decision=decision, rule=rule,
            rows=rows, duration_ms=duration_ms, detail=detail,
        )  # fmt: skip

    async def mcp_call(
        self,
        who: Subject,
        *,
        target: str,
        tool: str | None = None,
        resource: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        is_error: bool | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
        duration_ms: float | None = None,
        decision: str | None = None,
        rule: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """An MCP tool call (``tool`` and ``arguments``) or resource read (``resource``)."""
        action: dict[str, Any] = {"tool": tool, "resource": resource, "is_error": is_error}
        if arguments is not None:
            action["arguments"] = arguments
        return await self._record(
            "mcp.call", who, target=target, action=action, decision=decision, rule=rule,
            bytes_in=bytes_in, bytes_out=bytes_out, duration_ms=duration_ms, detail=detail,
        )  # fmt: skip

    # --- identity and administration ------------------------------------------------------

    async def token_issued(
        self,
        who: Subject,
        *,
        jti: str,
        issued: str,
        scope: Sequence[str] = (),
        expires_at: datetime | None = None,
        grant_type: str | None = None,
        audience: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """A credential was issued (``issued``: ``access_token``, ``ssh_certificate``,
        ``x509_certificate``). Its id is recorded, never the credential itself."""
        action = {
            "jti": jti,
            "issued": issued,
            "scope": list(scope),
            "expires_at": None if expires_at is None else expires_at.isoformat(),
            "grant_type": grant_type,
        }
        return await self._record(
            "token.issued", who, target=audience, action=action, decision="allow", detail=detail
        )

    async def token_refused(
        self,
        who: Subject,
        *,
        reason: str,
        grant_type: str | None = None,
        audience: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """A credential request was refused, ``reason`` saying why (never the credential)."""
        return await self._record(
            "token.refused", who, target=audience, action={"grant_type": grant_type},
            decision="deny", reason=reason, detail=detail,
        )  # fmt: skip

    async def revocation(
        self, actor: str, *, kind: str, value: str, reason: str, created: bool = True
    ) -> int:
        """A token, agent, task or runtime was revoked by ``actor``."""
        action = {"kind": kind, "value": value, "created": created}
        return await self._record(
            "revocation", Subject(user=actor), target=f"{kind}:{value}", action=action,
            reason=reason,
        )  # fmt: skip

    async def admin_change(
        self,
        actor: str,
        action: str,
        target: str | None,
        outcome: str,
        detail: Mapping[str, Any] | None = None,
        *,
        source_ip: str | None = None,
    ) -> int:
        """An admin API call by ``actor`` and how it ended: ``success`` (decision
        ``allow``), ``refused`` or ``denied`` (unauthenticated; decision ``deny``) or
        ``error`` (no decision)."""
        return await self._record(
            "admin.change", Subject(user=actor, source_ip=source_ip), target=target,
            action={"name": action, "outcome": outcome}, reason=outcome, detail=detail,
            decision=_ADMIN_DECISIONS.get(outcome),
        )  # fmt: skip

    async def approval(
        self,
        who: Subject,
        *,
        rule: str,
        approver: str | None,
        outcome: str,
        target: str | None = None,
        expires_at: datetime | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """An access request for ``rule`` was raised, granted, refused or expired."""
        action = {
            "approver": approver,
            "outcome": outcome,
            "expires_at": None if expires_at is None else expires_at.isoformat(),
        }
        return await self._record(
            "approval", who, target=target, action=action, rule=rule, detail=detail
        )
