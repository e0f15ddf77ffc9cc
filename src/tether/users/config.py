"""The ``users`` section of the configuration (documented in docs/users.md).

Only pydantic at import time: ``tether.config`` imports it for every command.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from tether.audit.sinks.config import EnvName

RoleName = Annotated[str, Field(pattern=r"^(admin|approver|auditor)$")]


class OidcLoginConfig(BaseModel):
    """Sign-in through an OIDC provider (authorization code flow with PKCE).

    ``issuer`` must be one of ``identity.user_issuers`` (kind ``oidc``): its keys, audiences
    (which must include ``client_id``), ``user_claim`` and ``groups_claim`` verify the ID token.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: Annotated[str, Field(pattern=r"^https?://")]
    client_id: Annotated[str, Field(min_length=1, max_length=200)]
    client_secret: SecretStr | None = None
    client_secret_env: EnvName | None = None
    redirect_uri: Annotated[str, Field(pattern=r"^https?://")] | None = None
    scopes: list[Annotated[str, Field(pattern=r"^[!#-\[\]-~]{1,64}$")]] = Field(
        default_factory=lambda: ["openid", "profile", "email", "groups"]
    )
    authorization_endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    token_endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    roles: dict[str, list[RoleName]] = Field(default_factory=dict)
    token_ttl: int = Field(default=12 * 3600, ge=60, le=30 * 86400)

    @model_validator(mode="after")
    def _at_most_one_secret(self) -> OidcLoginConfig:
        if self.client_secret is not None and self.client_secret_env is not None:
            raise ValueError("give at most one of client_secret and client_secret_env")
        return self

    def secret(self) -> str | None:
        """The client secret (None: a public client, PKCE only); raises ``ValueError`` when
        its variable is missing."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_env is None:
            return None
        found = os.environ.get(self.client_secret_env)
        if not found:
            raise ValueError(
                f"users.oidc: environment variable {self.client_secret_env} is not set"
            )
        return found


class UsersConfig(BaseModel):
    """How humans sign in, besides local passwords."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    oidc: OidcLoginConfig | None = None
