"""The ``audit`` section of the configuration, validated once at load.

It configures the writer (:class:`tether.audit.log.AuditLog`: checkpoint cadence, batch
size, SQLite durability, the head file), redaction (:class:`tether.audit.redact.Redactor`: extra
sensitive headers and the sensitive field names) and the SIEM sinks (``audit.sinks``,
:mod:`tether.audit.sinks.config`). Every key is documented in docs/audit.md and
docs/configuration.md.

This module needs only pydantic at import time: ``tether.config`` imports it for every
command.

Security decisions:

* ``sqlite_synchronous`` defaults to ``full``: an acknowledged event survives a power cut,
  not only a killed process. ``normal`` is allowed for those who measured and accept it.
* ``sensitive_fields`` *replaces* the default list when given (so a deployment can
  narrow it knowingly); ``sensitive_headers`` only *adds* to the headers that are always
  redacted (``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``,
  ``DPoP``), which cannot be turned off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tether.audit.sinks.config import SinkConfig, SinksConfig

DEFAULT_SENSITIVE_FIELDS: Final = (
    "password", "passwd", "secret", "token", "api_key", "private_key", "authorization",
    "cookie", "dpop", "session_key",
)  # fmt: skip

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]


class AuditConfig(BaseModel):
    """Every key of the ``audit`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint_every: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    checkpoint_interval: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    max_batch: Annotated[int, Field(ge=1, le=100_000)] = 1000
    sqlite_synchronous: Literal["full", "normal"] = "full"
    sensitive_headers: list[Name] = Field(default_factory=list)
    sensitive_fields: Annotated[list[Name], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_SENSITIVE_FIELDS)
    )
    sinks: list[SinkConfig] = Field(default_factory=list)
    # Where each checkpoint is also recorded (tether.audit.head). Default: next to a SQLite
    # database file; none for PostgreSQL.
    head_file: Path | None = None

    @model_validator(mode="after")
    def _unique_sinks(self) -> Self:
        SinksConfig(sinks=self.sinks)  # names unique, as the sinks section requires
        return self
