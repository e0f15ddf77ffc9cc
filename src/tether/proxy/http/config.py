"""The ``http_proxy`` section of the configuration: the HTTP broker (docs/http-broker.md),
and the ``tls`` section: HTTPS on the node's listener (API and HTTP broker).

This module needs only pydantic at import time: ``tether.config`` imports it for every
command.

Security decisions:

* **On by default, on the node's own listener.** The broker is mounted in the node's API
  application (``/t/<target>/...``), so it listens wherever the node listens (loopback in
  the default configuration) and serves nothing until a target is registered and a policy
  rule allows a request. ``enabled: false`` removes the routes.
* **Host routing only under a configured domain.** ``domain`` empty (the default) turns
  host-based routing off, so a forged ``Host`` header can never select a target.
* **TLS on the listener is opt-in and all or nothing**: ``tls.cert_file`` set turns the
  whole listener (API and broker) to HTTPS; client certificates are asked for but optional
  (``client_certificates: optional``), verified against Tether's own X.509 CA, so that
  certificate-bound tokens work and DPoP-bound ones need no certificate.
* **Limits are closed by default**: headers, request line and body reads have bounds, and
  a client that stalls is cut off rather than holding an upstream connection open.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DOMAIN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"


class HttpProxyConfig(BaseModel):
    """Every key of the ``http_proxy`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Host routing: ``<target>.<domain>`` selects the target; "" turns it off.
    domain: Annotated[str, Field(max_length=253)] = ""
    # The scheme agents use to reach the node (the ``htu`` of their DPoP proofs by host).
    scheme: Annotated[str, Field(pattern=r"^https?$")] = "http"
    max_request_line: Annotated[int, Field(ge=256, le=1 << 20)] = 8192
    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 16384
    max_headers: Annotated[int, Field(ge=8, le=10_000)] = 100
    # Longest wait for the next chunk of a request body / for the client to take a chunk.
    client_body_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    client_send_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Idle keep-alive connections kept per upstream (host, port, TLS settings).
    upstream_pool_size: Annotated[int, Field(ge=0, le=10_000)] = 32
    upstream_idle_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # HOST:PORT where the node also serves the demo API (README quickstart); "" = not served.
    demo_upstream: str = ""

    @field_validator("demo_upstream")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().lower().rstrip(".")
        if value and re.fullmatch(_DOMAIN, value) is None:
            raise ValueError(f"not a DNS domain name: {value!r}")
        return value


class ListenerTlsConfig(BaseModel):
    """Every key of the ``tls`` section (paths relative to ``data_dir``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # PEM certificate chain of the listener; None: plain HTTP.
    cert_file: Path | None = None
    # Its PEM private key (unencrypted); None: the key is in ``cert_file``.
    key_file: Path | None = None
    # Ask agents for a certificate from Tether's X.509 CA (certificate-bound tokens), or not.
    client_certificates: Literal["optional", "off"] = "optional"

    @model_validator(mode="after")
    def _cert_for_key(self) -> ListenerTlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file is set but tls.cert_file is not")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None
