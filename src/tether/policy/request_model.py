"""The validated request of the policy engine: its parts and the CEL view, built by
:func:`tether.policy.request.normalize`.

A :class:`Request` holds identities as plain fields and the action as a tuple of *parts*, one
per simple command, SQL statement, or HTTP method to authorise: every part must be allowed for
the request to be. The ``request`` view that CEL ``when`` expressions see is read-only and
built on first use. Nothing here validates: only the normaliser constructs these, and it never
returns a half-checked request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tether.policy import httpmatch, shell, sql


@dataclass(frozen=True, slots=True)
class HttpPart:
    method: str
    path: httpmatch.HttpPath


@dataclass(frozen=True, slots=True)
class SshCommandPart:
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SshShellPart:
    pass


@dataclass(frozen=True, slots=True)
class SshForwardPart:
    destination: str


@dataclass(frozen=True, slots=True)
class SqlPart:
    statement: sql.SqlStatement


@dataclass(frozen=True, slots=True)
class McpToolPart:
    tool: str


@dataclass(frozen=True, slots=True)
class McpResourcePart:
    uri: str


@dataclass(frozen=True, slots=True)
class FilesPart:
    op: str
    path: str


Part = (
    HttpPart
    | SshCommandPart
    | SshShellPart
    | SshForwardPart
    | SqlPart
    | McpToolPart
    | McpResourcePart
    | FilesPart
)


@dataclass(frozen=True, slots=True)
class Delegation:
    user: str
    groups: frozenset[str]


@dataclass(slots=True)
class Request:
    """A validated request. ``view`` is the JSON-like object CEL sees as ``request``."""

    agent_id: str
    agent_labels: dict[str, str]
    runtime_id: str | None
    runtime_labels: dict[str, str]
    delegation: Delegation | None
    task: dict[str, Any]
    scope_targets: tuple[str, ...] | None
    target_name: str
    target_labels: dict[str, str]
    kind: str
    parts: tuple[Part, ...]
    view: dict[str, Any]
    source_ip: str | None
    time: datetime | None
    approvals: frozenset[str]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)
    shell_command: shell.ParsedCommand | None = None
    view_builder: Callable[[], dict[str, Any]] | None = field(repr=False, default=None)

    def cel_view(self) -> dict[str, Any]:
        """The ``request`` object of CEL, built on first use (most decisions never need it)."""
        if self.view_builder is not None:
            self.view = self.view_builder()
            self.view_builder = None
        return self.view
