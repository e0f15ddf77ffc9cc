"""Tether's configuration: typed, validated once at load, errors naming the key and its source.

Settings come from four layers, each overriding the one before it::

    defaults  <  config file (TOML or YAML)  <  TETHER_* environment variables  <  CLI flags

The config file is optional and given explicitly (``--config FILE`` or ``TETHER_CONFIG``).
A relative path in the file resolves against the file's directory; a relative path from the
environment, a flag or a default resolves against the current directory.

Environment variables: ``TETHER_<KEY>`` sets the top-level key ``<key>`` (``TETHER_LISTEN``,
``TETHER_DATA_DIR``). A double underscore descends into a section, so that later sections
work the same way (``TETHER_API__LISTEN`` would set ``api.listen``). ``TETHER_CONFIG`` names
the config file and is not a setting, nor are the variables other parts read
(``NON_SETTING_VARIABLES``: the master key, the CLI's admin token and server). Any other
``TETHER_*`` variable is an error, so a typo never passes silently.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic_core import ErrorDetails

from tether.approvals.config import ApprovalsConfig
from tether.audit.config import AuditConfig
from tether.identity.config import IdentityConfig
from tether.proxy.http.config import HttpProxyConfig, ListenerTlsConfig
from tether.proxy.pg.config import PgProxyConfig
from tether.proxy.ssh.config import SshConfig
from tether.users.config import UsersConfig
from tether.yamlkeys import UniqueKeyLoader

ENV_PREFIX: Final = "TETHER_"
CONFIG_ENV: Final = "TETHER_CONFIG"
# TETHER_* variables that are not settings: read by the master key loader and by the CLI.
NON_SETTING_VARIABLES: Final = frozenset(
    {CONFIG_ENV, "TETHER_MASTER_KEY", "TETHER_ADMIN_TOKEN", "TETHER_SERVER", "TETHER_DEBUG"}
)
DEFAULT_LISTEN: Final = "127.0.0.1:8765"
DATABASE_FILE: Final = "tether.db"

# Keys holding filesystem paths: a relative value resolves against its source's directory.
_PATH_KEYS: Final = frozenset({"data_dir", "policies"})

# A plain ``postgresql://`` or ``sqlite://`` URL gets Tether's async driver.
_DRIVERS: Final = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class ConfigError(Exception):
    """The configuration is unusable; the message names the source and the key."""


def split_listen(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (IPv6 hosts in brackets, ``[::1]:8765``) as ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _check_listen(value: str) -> str:
    split_listen(value)
    return value


def _normalise_database_url(value: str) -> str:
    # Imported here: SQLAlchemy is heavy, and only needed when a URL is configured.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError("expected a sqlite:// or postgresql:// URL") from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        shown = url.render_as_string(hide_password=True)
        raise ValueError(f"expected a sqlite:// or postgresql:// URL, got {shown!r}")
    url = url.set(drivername=driver)
    if driver == _DRIVERS["postgresql"]:
        url = url.set(query=_postgres_query(url.query))
    return url.render_as_string(hide_password=False)


# libpq's sslmode values, which asyncpg takes as its ``ssl`` argument.
_SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query parameters asyncpg (through SQLAlchemy) takes as given in a URL; every other one
# reached asyncpg.connect() as an unexpected keyword: an internal error at the first query.
_POSTGRES_QUERY: Final = frozenset({"ssl", "target_session_attrs", "prepared_statement_cache_size"})


def _postgres_query(query: Mapping[str, str | tuple[str, ...]]) -> dict[str, str]:
    """A PostgreSQL URL's query for asyncpg: libpq's ``sslmode`` (what operators write to
    demand TLS) becomes ``ssl``; an unknown or repeated parameter, or a mode that is not
    one, is refused at start, naming it (never the URL, which may hold a password)."""
    options: dict[str, str] = {}
    for name, value in query.items():
        if not isinstance(value, str):
            raise ValueError(f"query parameter {name!r} is given twice")
        key = "ssl" if name == "sslmode" else name
        if key not in _POSTGRES_QUERY:
            known = ", ".join(["sslmode", *sorted(_POSTGRES_QUERY)])
            raise ValueError(f"unknown query parameter {name!r} (known: {known})")
        if key in options:
            raise ValueError("give one of sslmode and ssl")
        options[key] = value
    if options.get("ssl", "require") not in _SSL_MODES:
        raise ValueError(f"sslmode must be one of {', '.join(_SSL_MODES)}")
    if not options.get("prepared_statement_cache_size", "0").isdigit():
        raise ValueError("prepared_statement_cache_size must be a number")
    return options


def _check_proxies(value: list[str]) -> list[str]:
    """Each entry an IP address or network (``10.0.0.0/8``), written out: uvicorn's ``*``
    (trust every peer) is refused, as it would let any client name its own address."""
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"expected IP addresses or networks (10.0.0.0/8, ::1), got {entry!r}"
            ) from None
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseModel):
    """Every setting of a Tether node; see docs/configuration.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Annotated[str, AfterValidator(_check_listen)] = DEFAULT_LISTEN
    data_dir: Path = Path(".tether")
    policies: Path = Path("policies")
    # repr=False: a PostgreSQL URL may carry a password, and settings get logged.
    database_url: Annotated[str, AfterValidator(_normalise_database_url)] | None = Field(
        default=None, repr=False
    )
    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = "info"
    policy_watch: bool = True
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (docs/configuration.md).
    trusted_proxies: Annotated[list[str], AfterValidator(_check_proxies)] = Field(
        default_factory=list
    )
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    users: UsersConfig = Field(default_factory=UsersConfig)
    tls: ListenerTlsConfig = Field(default_factory=ListenerTlsConfig)
    http_proxy: HttpProxyConfig = Field(default_factory=HttpProxyConfig)
    pg_proxy: PgProxyConfig = Field(default_factory=PgProxyConfig)
    ssh: SshConfig = Field(default_factory=SshConfig)

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def database(self) -> str:
        """The database URL in use: ``database_url``, or SQLite in ``data_dir``."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / DATABASE_FILE}"


class _Layer:
    """One source of settings: its raw values, and how to name the source of each key."""

    def __init__(
        self, values: dict[str, Any], base: Path, source: str, names: Mapping[str, str]
    ) -> None:
        self.values = _resolve_paths(values, base)
        self.source = source  # the whole source: a file name, "environment", "command line"
        self.names = names  # dotted key -> the variable or flag that set it

    def name_of(self, key: str) -> str:
        """The variable, flag or file that set ``key`` (or something below or above it)."""
        if key in self.names:
            return self.names[key]
        for name_key, name in self.names.items():
            if name_key.startswith(key + ".") or key.startswith(name_key + "."):
                return name
        return self.source

    def sets(self, key: str) -> bool:
        node: Any = self.values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True


def load_settings(
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Settings from defaults, ``config_file``, ``environ`` and CLI ``overrides``, in that order.

    ``overrides`` maps keys to values given on the command line (None values are ignored).
    Raises :class:`ConfigError` naming the offending source and key.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV])
    layers = [
        _file_layer(config_file, cwd) if config_file is not None else None,
        _env_layer(environ, cwd),
        _cli_layer(overrides or {}, cwd),
    ]
    return _validate([layer for layer in layers if layer is not None], cwd)


def _validate(layers: list[_Layer], cwd: Path) -> Settings:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, layer.values)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe_errors(error, layers)) from None
    absolute = {key: cwd / getattr(settings, key) for key in _PATH_KEYS}
    return settings.model_copy(update=absolute)


def _file_layer(path: Path, cwd: Path) -> _Layer:
    return _Layer(read_config_file(path), (cwd / path).parent, str(path), {})


def read_config_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of a TOML (``.toml``) or YAML (``.yaml``, ``.yml``) file."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(
            f"{path}: unknown config format {suffix or '(none)'!r}; use .toml, .yaml or .yml"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    data = _parse_toml(path, text) if suffix == ".toml" else _parse_yaml(path, text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def _parse_toml(path: Path, text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    return {} if data is None else data


def _env_layer(environ: Mapping[str, str], cwd: Path) -> _Layer:
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_VARIABLES:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(parts):
            raise ConfigError(f"environment variable {name}: malformed setting name")
        _set_nested(values, parts, value)
        names[".".join(parts)] = f"environment variable {name}"
    return _Layer(values, cwd, "environment", names)


def _cli_layer(overrides: Mapping[str, Any], cwd: Path) -> _Layer:
    values = {key: value for key, value in overrides.items() if value is not None}
    names = {key: f"--{key.replace('_', '-')}" for key in values}
    return _Layer(values, cwd, "command line", names)


def _set_nested(target: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[parts[-1]] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    resolved = dict(values)
    for key in _PATH_KEYS & resolved.keys():
        if isinstance(resolved[key], str):
            resolved[key] = str(base / Path(resolved[key]).expanduser())
    identity = resolved.get("identity")
    if isinstance(identity, dict):
        resolved["identity"] = _resolve_jwks_files(identity, base)
    return resolved


def _resolve_jwks_files(identity: dict[str, Any], base: Path) -> dict[str, Any]:
    """``jwks_file`` of each trusted issuer, relative to its source's directory."""
    resolved = dict(identity)
    for section in ("workload_issuers", "user_issuers"):
        issuers = resolved.get(section)
        if not isinstance(issuers, list):
            continue
        resolved[section] = [
            {**i, "jwks_file": str(base / Path(i["jwks_file"]).expanduser())}
            if isinstance(i, dict) and isinstance(i.get("jwks_file"), str)
            else i
            for i in issuers
        ]
    return resolved


def _describe_errors(error: ValidationError, layers: list[_Layer]) -> str:
    return "\n".join(_describe_error(detail, layers) for detail in error.errors())


def _describe_error(detail: ErrorDetails, layers: list[_Layer]) -> str:
    key = ".".join(str(part) for part in detail["loc"])
    source = _source_of(key, layers)
    if detail["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown setting"
    if detail["type"] == "value_error":
        message = str(detail.get("ctx", {}).get("error", detail["msg"]))
    elif isinstance(detail["input"], dict | list) or _secret_named(key):
        message = detail["msg"]  # a section may hold a secret (a webhook's, a sink's token)
    else:
        message = f"{detail['msg']}, got {detail['input']!r}"
    return f"{source}: {key}: {message}"


_SECRET_PARTS: Final = ("secret", "token", "password", "passwd", "key", "credential")


def _secret_named(key: str) -> bool:
    """Whether a setting's dotted name says it may hold a secret (its value is not shown)."""
    return any(part in key.lower() for part in _SECRET_PARTS)


def _source_of(key: str, layers: list[_Layer]) -> str:
    """The name of the last (winning) layer that set ``key`` or a part of it."""
    parts = key.split(".")
    for layer in reversed(layers):
        for depth in range(len(parts), 0, -1):
            if layer.sets(".".join(parts[:depth])):
                return layer.name_of(key)
    return "defaults"
