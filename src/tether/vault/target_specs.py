"""What a target is, per kind: the pydantic models of target specs and their credentials.

Every model is frozen, strict (no coercion of ``"5"`` to ``5`` or ``"yes"`` to ``True``) and
refuses unknown fields, so a misspelt ``tls_verifiy: false`` is an error rather than a
silently ignored opt-out. Credentials are a union discriminated by ``type``.

Security decisions:

* **Specs name secrets, never hold them.** Every ``secret`` field is a secret *name* in the
  :class:`tether.vault.secrets.SecretStore`; names reserved for Tether's own secrets
  (``tether/...``) are refused, so a target can never make Tether send its own keys upstream.
* **Verification is the default and opting out is explicit**: HTTP ``tls_verify`` defaults
  to true, PostgreSQL ``tls_mode`` to ``verify-full``; an SSH target must say how its host
  key is checked (``known_hosts`` or ``host_ca``); there is no "accept any host key".
  A CA bundle given together with a setting that would ignore it is refused as contradictory.
* A header credential cannot name a header that frames or routes the request (``Host``,
  ``Content-Length``, hop-by-hop headers), which would let a credential smuggle requests.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.functional_validators import AfterValidator

from tether.vault.names import check_secret_name
from tether.vault.spec_checks import (
    check_base_url,
    check_host,
    check_known_hosts,
    check_pem_bundle,
    check_ssh_public_key,
    check_token_url,
    no_control,
)

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")  # RFC 9110 token
_FORBIDDEN_HEADERS: Final = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
        "te", "trailer", "proxy-connection", "proxy-authorization", "proxy-authenticate",
        "expect", "cookie", "content-type", "content-encoding",
    }
)  # fmt: skip
_QUERY_PARAM: Final = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_SCOPE: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
_LOGIN: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
_ROLE_PREFIX: Final = re.compile(r"[a-z_][a-z0-9_]{0,15}")


def _secret(value: str) -> str:
    return check_secret_name(value)


def _header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError("expected an HTTP header name (RFC 9110 token)")
    if value.lower() in _FORBIDDEN_HEADERS or value.lower().startswith("proxy-"):
        raise ValueError(f"the {value!r} header cannot carry a credential")
    return value


def _pattern(regex: re.Pattern[str], text: str) -> AfterValidator:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"expected {text}")
        return value

    return AfterValidator(check)


def _plain(max_length: int) -> Any:
    return Field(min_length=1, max_length=max_length)


SecretName = Annotated[str, AfterValidator(_secret)]
Host = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(check_host)]
Port = Annotated[int, Field(ge=1, le=65535)]
PemBundle = Annotated[str, AfterValidator(check_pem_bundle)]
PlainText = Annotated[str, AfterValidator(lambda v: no_control(v))]
PgName = Annotated[PlainText, _plain(63)]
Login = Annotated[str, _pattern(_LOGIN, "a login name: A-Z a-z 0-9 _ . @ - (1-64)")]
ConnectTimeout = Annotated[float, Field(gt=0, le=300)]
Validity = Annotated[int, Field(ge=60, le=86400)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# --- HTTP ---------------------------------------------------------------------------------


class HeaderCredential(_Spec):
    """The secret sent as the value of header ``header_name``."""

    type: Literal["header"]
    secret: SecretName
    header_name: Annotated[str, AfterValidator(_header_name)]


class BearerCredential(_Spec):
    """The secret sent as ``Authorization: Bearer <secret>``."""

    type: Literal["bearer"]
    secret: SecretName


class BasicCredential(_Spec):
    """``Authorization: Basic`` with ``username`` and the secret as password (RFC 7617)."""

    type: Literal["basic"]
    username: Annotated[PlainText, _plain(256), _pattern(re.compile(r"[^:]*"), "no ':'")]
    secret: SecretName


class QueryCredential(_Spec):
    """The secret sent as query parameter ``param`` (only when an API demands it)."""

    type: Literal["query"]
    secret: SecretName
    param: Annotated[str, _pattern(_QUERY_PARAM, "a parameter name: A-Z a-z 0-9 . _ ~ -")]


class OAuth2ClientCredentials(_Spec):
    """OAuth 2.0 client credentials grant (RFC 6749 4.4); the secret is the client secret."""

    type: Literal["oauth2_client_credentials"]
    token_url: Annotated[str, AfterValidator(check_token_url)]
    client_id: Annotated[PlainText, _plain(512)]
    secret: SecretName
    scope: Annotated[str, _pattern(_SCOPE, "space-separated scope tokens")] | None = None
    audience: Annotated[PlainText, _plain(512)] | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"


HttpCredential = Annotated[
    HeaderCredential
    | BearerCredential
    | BasicCredential
    | QueryCredential
    | OAuth2ClientCredentials,
    Field(discriminator="type"),
]


class HttpTargetSpec(_Spec):
    """An HTTP API reached at ``base_url``."""

    base_url: Annotated[str, AfterValidator(check_base_url)]
    tls_verify: bool = True
    ca_bundle: PemBundle | None = None
    credential: HttpCredential | None = None
    connect_timeout: ConnectTimeout = 5.0
    read_timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_request_body: Annotated[int, Field(ge=0)] | None = None
    # GET and HEAD without a body go to the target while their decision event commits; the
    # answer is held back until it has (docs/http-broker.md, "Pipelined reads"). Only for a
    # target whose GET and HEAD change nothing.
    pipeline_reads: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> HttpTargetSpec:
        if self.ca_bundle is not None and not self.base_url.lower().startswith("https:"):
            raise ValueError("ca_bundle is only for an https base_url")
        if self.ca_bundle is not None and not self.tls_verify:
            raise ValueError("ca_bundle is given but tls_verify is false")
        return self


# --- SSH ----------------------------------------------------------------------------------


class SshKeyCredential(_Spec):
    """A private key kept in the vault (OpenSSH or PEM format)."""

    type: Literal["private_key"]
    secret: SecretName


class SshCertCredential(_Spec):
    """A certificate per session from Tether's target-facing SSH CA (no standing secret)."""

    type: Literal["certificate"]
    validity_seconds: Validity = 600


class SshTargetSpec(_Spec):
    """An SSH server; its host key is checked against ``known_hosts`` and/or ``host_ca``."""

    host: Host
    port: Port = 22
    users: Annotated[tuple[Login, ...], Field(min_length=1, max_length=64)]
    known_hosts: Annotated[str, AfterValidator(check_known_hosts)] | None = None
    host_ca: Annotated[str, AfterValidator(check_ssh_public_key)] | None = None
    credential: Annotated[SshKeyCredential | SshCertCredential, Field(discriminator="type")]
    connect_timeout: ConnectTimeout = 10.0

    @model_validator(mode="after")
    def _consistent(self) -> SshTargetSpec:
        if self.known_hosts is None and self.host_ca is None:
            raise ValueError("give known_hosts or host_ca: the host key is always verified")
        if len(set(self.users)) != len(self.users):
            raise ValueError("users are listed more than once")
        return self


# --- PostgreSQL ---------------------------------------------------------------------------


class PgPasswordCredential(_Spec):
    """A standing login: ``username`` with the secret as password."""

    type: Literal["password"]
    username: PgName
    secret: SecretName


class PgDynamicCredential(_Spec):
    """A role per session, created by ``admin_username`` and granted ``parent_role``."""

    type: Literal["dynamic"]
    admin_username: PgName
    admin_secret: SecretName
    parent_role: PgName
    role_prefix: Annotated[str, _pattern(_ROLE_PREFIX, "a-z 0-9 _ (1-16), not a digit first")] = (
        "tether_"
    )
    validity_seconds: Validity = 3600


class PostgresTargetSpec(_Spec):
    """A PostgreSQL server and database."""

    host: Host
    port: Port = 5432
    database: PgName
    tls_mode: Literal["verify-full", "verify-ca", "require", "disable"] = "verify-full"
    ca_bundle: PemBundle | None = None
    default_schema: PgName = "public"
    credential: Annotated[PgPasswordCredential | PgDynamicCredential, Field(discriminator="type")]

    @model_validator(mode="after")
    def _consistent(self) -> PostgresTargetSpec:
        if self.ca_bundle is not None and self.tls_mode in ("require", "disable"):
            raise ValueError(f"ca_bundle is given but tls_mode {self.tls_mode!r} ignores it")
        return self


TargetSpec = HttpTargetSpec | SshTargetSpec | PostgresTargetSpec
SPEC_MODELS: Final[dict[str, type[TargetSpec]]] = {
    "http": HttpTargetSpec,
    "ssh": SshTargetSpec,
    "postgres": PostgresTargetSpec,
}


class SpecError(ValueError):
    """A spec that does not validate; the message names the field and the rule."""


def parse_spec(kind: str, data: TargetSpec | Any) -> TargetSpec:
    """``data`` (a model, or JSON-compatible data) as the spec model of ``kind``.

    Plain data goes through JSON so that strict validation treats lists as tuples the same
    way whether the spec came from an API body, a file or the database.
    """
    model = SPEC_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise SpecError(f"unknown target kind {str(kind)[:40]!r}: expected http, ssh or postgres")
    if isinstance(data, BaseModel):
        if not isinstance(data, model):
            raise SpecError(f"a {type(data).__name__} is not a spec of kind {kind!r}")
        return data
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError):
        raise SpecError("spec: not JSON data (infinity, NaN or a non-JSON type)") from None
    except RecursionError:
        raise SpecError("spec: nested too deeply") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        raise SpecError(describe(error)) from None


def describe(error: ValidationError) -> str:
    """The first problem of ``error`` as ``spec.field.path: message``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"spec{'.' + where if where else ''}: {message}"


def secret_names(spec: TargetSpec) -> tuple[str, ...]:
    """The secret names ``spec``'s credential refers to."""
    credential = spec.credential
    if credential is None:
        return ()
    names = [getattr(credential, field, None) for field in ("secret", "admin_secret")]
    return tuple(name for name in names if isinstance(name, str))


def warnings(spec: TargetSpec) -> tuple[str, ...]:
    """What an operator must see about ``spec``: the ways it weakens verification."""
    found: list[str] = []
    if isinstance(spec, HttpTargetSpec):
        if not spec.tls_verify and spec.base_url.lower().startswith("https:"):
            found.append("insecure: upstream TLS certificates are NOT verified")
        if spec.base_url.lower().startswith("http:") and spec.credential is not None:
            found.append("insecure: the credential is sent upstream over plain http")
        credential = spec.credential
        if isinstance(credential, OAuth2ClientCredentials) and not spec.tls_verify:
            # The token endpoint is reached with the target's TLS settings: the opt-out
            # covers where the client secret goes too, which may be another host.
            found.append("insecure: the OAuth client secret goes to token_url unverified")
        if spec.pipeline_reads:
            found.append("pipeline_reads: GET and HEAD are sent before their audit event commits")
    if isinstance(spec, PostgresTargetSpec) and spec.tls_mode in ("require", "disable"):
        found.append(
            "insecure: TLS is off" if spec.tls_mode == "disable" else
            "insecure: the server certificate is NOT verified (tls_mode require)"
        )  # fmt: skip
    return tuple(found)
