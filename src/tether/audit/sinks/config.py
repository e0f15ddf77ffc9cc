"""The ``audit.sinks`` configuration: a list of sinks, each with a unique name and a kind.

Validated once at load (pydantic), so that an unusable sink stops the node at start rather
than failing at its first delivery. Secrets (the HEC token, the webhook secret) are either
in the file or, better, named by an environment variable (``token_env``, ``secret_env``)
read when the sink is built; they are never part of ``repr`` or of an error message.
Variable names starting with ``TETHER_`` are refused: Tether's configuration loader treats
those as settings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    model_validator,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_TOKEN = re.compile(r"[!-~]+")  # what ``Authorization: Splunk <token>`` can carry


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError("expected an environment variable name")
    if value.upper().startswith("TETHER_"):
        raise ValueError("TETHER_* variables are settings; name another variable")
    return value


EnvName = Annotated[str, AfterValidator(_check_env_name)]


class SinkConfigError(ValueError):
    """A sink cannot be built from its configuration (a missing secret variable)."""


class Backoff(BaseModel):
    """Retry delays while a sink is down: exponential from ``initial`` up to ``max``, each
    shortened by a random fraction up to ``jitter`` (so that nodes do not retry in step)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial: float = Field(default=0.5, gt=0, le=3600)
    max: float = Field(default=60.0, gt=0, le=86400)
    multiplier: float = Field(default=2.0, ge=1, le=10)
    jitter: float = Field(default=0.2, ge=0, le=1)

    def delay(self, attempt: int, random: float) -> float:
        """The pause before retry number ``attempt`` (0-based); ``random`` is in [0, 1)."""
        base = min(self.max, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1 - self.jitter * random)


class _SinkBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    enabled: bool = True
    batch_size: int = Field(default=500, ge=1, le=10_000)
    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    # Where a new cursor starts: the whole trail, or only events after the sink was added.
    start: Literal["beginning", "end"] = "beginning"
    backoff: Backoff = Field(default_factory=Backoff)


class JsonlSinkConfig(_SinkBase):
    """Rotated JSON Lines files: ``path``, then ``path.1`` (newest) ... ``path.<keep>``."""

    kind: Literal["jsonl"]
    path: Path
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    keep: int = Field(default=10, ge=0, le=10_000)
    fsync: bool = True


class _TlsOptions(BaseModel):
    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # a client certificate, for receivers that ask for one
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> _TlsOptions:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        return self


class SyslogSinkConfig(_SinkBase, _TlsOptions):
    """RFC 5424 over TCP or TLS, RFC 6587 octet-counting framing."""

    kind: Literal["syslog"]
    host: str
    port: int = Field(default=6514, ge=1, le=65535)
    transport: Literal["tcp", "tls"] = "tls"
    server_name: str | None = None  # None: ``host``; checked against the certificate
    facility: int = Field(default=13, ge=0, le=23)  # 13: log audit
    app_name: str = Field(default="tether", pattern=r"^[!-~]{1,48}$")
    hostname: str | None = Field(default=None, pattern=r"^[!-~]{1,255}$")  # None: this machine's
    sd_id: str = Field(default="tether@32473", pattern=r"^[!#-<>-\\^-~]{1,32}$")
    # A whole message, in octets: larger events are shrunk to fit (see sinks/rfc5424.py).
    # Never above the receiver's frame limit (rsyslog: maxFrameSize, 200000).
    max_message_bytes: int = Field(default=8096, ge=2048, le=200_000)
    timeout: float = Field(default=10.0, gt=0, le=600)


class HecSinkConfig(_SinkBase, _TlsOptions):
    """Splunk HTTP Event Collector (``/services/collector/event``)."""

    kind: Literal["hec"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    token: SecretStr | None = None
    token_env: EnvName | None = None
    index: str | None = None
    source: str = "tether"
    sourcetype: str = "ocsf"
    host: str | None = None
    use_ack: bool = False  # indexer acknowledgement: wait until Splunk has indexed
    ack_timeout: float = Field(default=60.0, gt=0, le=3600)
    timeout: float = Field(default=10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _one_token(self) -> HecSinkConfig:
        if (self.token is None) == (self.token_env is None):
            raise ValueError("give exactly one of token and token_env")
        return self

    def secret(self) -> str:
        """The token, checked to fit an HTTP header: a token read from a file or a
        Kubernetes secret often ends in a newline, and the HTTP library's refusal of such a
        header quoted it, token and all, into the sink's error, its log line and
        ``tether audit sinks``. Refused at start instead, without naming it."""
        token = _secret(self.token, self.token_env, self.name)
        if not _HEADER_TOKEN.fullmatch(token):
            where = "token" if self.token_env is None else f"environment variable {self.token_env}"
            raise SinkConfigError(
                f"sink {self.name}: the HEC token ({where}) must be printable ASCII without "
                "blanks, as an HTTP header carries it (a trailing newline?)"
            )
        return token


class WebhookSinkConfig(_SinkBase, _TlsOptions):
    """A JSON array per batch, POSTed and signed with HMAC-SHA256."""

    kind: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret: SecretStr | None = None
    secret_env: EnvName | None = None
    timeout: float = Field(default=10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookSinkConfig:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret and secret_env")
        return self

    def signing_key(self) -> bytes:
        return _secret(self.secret, self.secret_env, self.name).encode("utf-8")


SinkConfig = Annotated[
    JsonlSinkConfig | SyslogSinkConfig | HecSinkConfig | WebhookSinkConfig,
    Field(discriminator="kind"),
]
SINKS_ADAPTER: TypeAdapter[list[SinkConfig]] = TypeAdapter(list[SinkConfig])


class SinksConfig(BaseModel):
    """The ``audit.sinks`` list, with names checked unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sinks: list[SinkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> SinksConfig:
        names = [sink.name for sink in self.sinks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"sink names must be unique: {', '.join(repeated)}")
        return self


def _secret(value: SecretStr | None, env: str | None, sink: str) -> str:
    if value is not None:
        return value.get_secret_value()
    assert env is not None
    found = os.environ.get(env)
    if not found:
        raise SinkConfigError(f"sink {sink}: environment variable {env} is not set")
    return found
