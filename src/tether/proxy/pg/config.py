"""The ``pg`` section of the configuration: the PostgreSQL broker's listener and limits.

Every key is documented in docs/pg-broker.md and docs/configuration.md. The broker is off
unless ``enabled: true``; enabled, it listens on loopback port 6432 by default and requires
TLS (``require_tls``), with the certificate from ``tls_cert``/``tls_key`` or, when neither is
given, one generated at first start into the data directory (``pg-broker.crt``/``.key``).
Relative certificate paths resolve against the data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

DEFAULT_LISTEN = "127.0.0.1:6432"


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


Listen = Annotated[str, AfterValidator(_check_listen)]


class PgProxyConfig(BaseModel):
    """The PostgreSQL broker (``pg`` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    listen: Listen = DEFAULT_LISTEN
    # host:port agents dial: part of the DPoP proof's htu (docs/pg-broker.md); default listen.
    public_address: Listen | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = True
    max_message_bytes: Annotated[int, Field(ge=65_536, le=1 << 30)] = 16 << 20
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 1000
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    login_timeout: Annotated[float, Field(gt=0, le=300)] = 30.0

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        return self

    @property
    def host(self) -> str:
        host = self.listen.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def advertised(self) -> str:
        """The ``host:port`` in DPoP proofs' ``htu``."""
        return self.public_address or self.listen
