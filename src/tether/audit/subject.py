"""Who acts in an audit event: the identity part every event carries.

A front-end builds one :class:`Subject` per session from the credential it authenticated
(agent, runtime, task, delegation), and passes it to each :class:`tether.audit.emit.Auditor`
call of that session; :meth:`Subject.from_request` reads one from a policy request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Subject:
    """Who acts, from where, in which session: the identity part of every event.

    ``user`` and ``actor_chain`` are set for a delegation (the user the agent acts for,
    and the actors of the token exchange, outermost first: the token's ``act`` claims).
    For admin events ``user`` is the admin principal (``admin-token:<id>``).
    """

    agent: str | None = None
    runtime: str | None = None
    task: str | None = None
    user: str | None = None
    actor_chain: tuple[str, ...] = ()
    source_ip: str | None = None
    session_id: str | None = None

    @classmethod
    def from_request(cls, request: Mapping[str, Any], session_id: str | None = None) -> Subject:
        """The subject of a policy request (``shared/spec/policy.md`` section 2)."""
        delegation = object_of(request.get("delegation"))
        return cls(
            agent=id_of(request.get("agent")),
            runtime=id_of(request.get("runtime")),
            task=id_of(request.get("task")),
            user=text_of(delegation.get("user")),
            source_ip=text_of(request.get("source_ip")),
            session_id=session_id,
        )


def object_of(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (requests are untrusted input)."""
    return value if isinstance(value, Mapping) else {}


def text_of(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def id_of(value: Any, key: str = "id") -> str | None:
    """The string ``value[key]`` of an object such as ``{"id": "billing-bot"}``, or None."""
    return text_of(object_of(value).get(key))
