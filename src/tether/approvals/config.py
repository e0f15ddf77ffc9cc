"""The ``approvals`` section of the configuration (documented in docs/approvals.md).

This module needs only pydantic at import time: ``tether.config`` imports it for every
command. A webhook's signing secret is in the file or, better, named by an environment
variable (``secret_env``); a missing variable refuses the node's start, never a delivery.
"""

from __future__ import annotations

import os
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from tether.audit.sinks.config import EnvName


class ApprovalsConfigError(Exception):
    """A webhook cannot be built from its configuration (a missing secret variable)."""


class WebhookConfig(BaseModel):
    """Notify one approver group (``*``: every request) with a signed JSON POST."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9._:@/-]{0,99})$")]
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret: SecretStr | None = None
    secret_env: EnvName | None = None
    timeout: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret and secret_env")
        try:  # what the delivery will parse: refused at start, never at the first send
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL as error:
            raise ValueError(f"url: not a valid URL ({error})") from None
        if not parsed.host:
            raise ValueError("url: no host")
        return self

    def signing_key(self) -> bytes:
        if self.secret is not None:
            return self.secret.get_secret_value().encode("utf-8")
        assert self.secret_env is not None
        found = os.environ.get(self.secret_env)
        if not found:
            raise ApprovalsConfigError(
                f"approvals webhook for {self.group}: environment variable "
                f"{self.secret_env} is not set"
            )
        return found.encode("utf-8")


class ApprovalsConfig(BaseModel):
    """How long requests wait, and who is told about them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pending_ttl: int = Field(default=86400, ge=60, le=30 * 86400)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    retries: int = Field(default=5, ge=0, le=20)
    retry_backoff: float = Field(default=1.0, gt=0, le=300)
    link_base: Annotated[str, Field(pattern=r"^https?://")] | None = None
    notification_retention: int = Field(default=7 * 86400, ge=60, le=365 * 86400)
