"""How an operator describes a target on the command line or in a file, as API input.

Two forms, both ending as ``(kind, spec data, labels)`` for ``POST /v1/targets`` (where the
spec is validated by :mod:`tether.vault.target_specs`; the CLI validates it first too, for
an immediate message):

* **Flags** (:func:`spec_from_flags`): ``--url``, ``--host``, ... and a compact credential,
  ``bearer:SECRET``, ``header:NAME:SECRET``, ``basic:USER:SECRET``, ``query:PARAM:SECRET``
  (http); ``private_key:SECRET``, ``certificate[:SECONDS]`` (ssh); ``password:USER:SECRET``,
  ``dynamic:ADMIN_USER:ADMIN_SECRET:PARENT_ROLE`` (postgres). Secret names never contain
  ``:``, so the split is unambiguous; every part must be non-empty. A flag that does not
  belong to the kind is an error, not ignored.
* **A YAML or JSON file** (:func:`spec_from_document`): ``kind``, optional ``name`` and
  ``labels``, and the spec's fields at the top level; ``ca_bundle_file``,
  ``known_hosts_file`` and ``host_ca_file`` name files (relative to the document) whose
  text becomes ``ca_bundle``, ``known_hosts`` and ``host_ca``.

Every function here is total: it returns, or raises :class:`TargetInputError` with a
message naming the flag, field or file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import yaml

from tether.vault.names import KINDS
from tether.yamlkeys import UniqueKeyLoader

MAX_FILE_BYTES: Final = 1 << 20
_FILE_FIELDS: Final = {
    "ca_bundle_file": "ca_bundle",
    "known_hosts_file": "known_hosts",
    "host_ca_file": "host_ca",
}
ReadText = Callable[[Path], str]


class TargetInputError(ValueError):
    """Flags or a file that do not describe a target; the message says which and why."""


@dataclass(frozen=True)
class Flags:
    """The spec flags of ``tether target add`` (``None``: not given)."""

    url: str | None = None
    ca_bundle: Path | None = None
    insecure_skip_tls_verify: bool = False
    credential: str | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    max_body: int | None = None
    host: str | None = None
    port: int | None = None
    users: tuple[str, ...] = field(default=())
    known_hosts: Path | None = None
    host_ca: Path | None = None
    database: str | None = None
    tls_mode: str | None = None
    default_schema: str | None = None
    pipeline_reads: bool = False

    def given(self) -> list[str]:
        """The names of the flags given."""
        return [f.name for f in fields(self) if getattr(self, f.name) not in (None, False, ())]


# The kinds each flag applies to, and its spelling on the command line.
_FLAG_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "url": ("http",),
    "ca_bundle": ("http", "postgres"),
    "insecure_skip_tls_verify": ("http",),
    "credential": KINDS,
    "connect_timeout": ("http", "ssh"),
    "read_timeout": ("http",),
    "max_body": ("http",),
    "host": ("ssh", "postgres"),
    "port": ("ssh", "postgres"),
    "users": ("ssh",),
    "known_hosts": ("ssh",),
    "host_ca": ("ssh",),
    "database": ("postgres",),
    "tls_mode": ("postgres",),
    "default_schema": ("postgres",),
    "pipeline_reads": ("http",),
}


def flag_name(attribute: str) -> str:
    """``--max-body`` for ``max_body`` (``--user`` for ``users``)."""
    return "--user" if attribute == "users" else "--" + attribute.replace("_", "-")


def spec_from_flags(kind: str, flags: Flags, read_text: ReadText) -> dict[str, Any]:
    """The spec data that ``flags`` describe for ``kind``."""
    if kind not in KINDS:
        raise TargetInputError(f"--kind {kind[:40]!r}: expected http, ssh or postgres")
    for name in flags.given():
        if kind not in _FLAG_KINDS[name]:
            raise TargetInputError(f"{flag_name(name)} is not an option of kind {kind!r}")
    spec = _BUILDERS[kind](flags, read_text)
    if flags.credential is not None:
        spec["credential"] = parse_credential(kind, flags.credential)
    return {key: value for key, value in spec.items() if value is not None}


def _http(flags: Flags, read_text: ReadText) -> dict[str, Any]:
    if flags.url is None:
        raise TargetInputError("kind http needs --url")
    return {
        "base_url": flags.url,
        "tls_verify": not flags.insecure_skip_tls_verify,
        "ca_bundle": _read(flags.ca_bundle, read_text),
        "connect_timeout": flags.connect_timeout,
        "read_timeout": flags.read_timeout,
        "max_request_body": flags.max_body,
        "pipeline_reads": True if flags.pipeline_reads else None,
    }


def _ssh(flags: Flags, read_text: ReadText) -> dict[str, Any]:
    if flags.host is None or not flags.users or flags.credential is None:
        raise TargetInputError("kind ssh needs --host, --user (one or more) and --credential")
    return {
        "host": flags.host,
        "port": flags.port,
        "users": list(flags.users),
        "known_hosts": _read(flags.known_hosts, read_text),
        "host_ca": _read(flags.host_ca, read_text),
        "connect_timeout": flags.connect_timeout,
    }


def _postgres(flags: Flags, read_text: ReadText) -> dict[str, Any]:
    if flags.host is None or flags.database is None or flags.credential is None:
        raise TargetInputError("kind postgres needs --host, --database and --credential")
    return {
        "host": flags.host,
        "port": flags.port,
        "database": flags.database,
        "tls_mode": flags.tls_mode,
        "ca_bundle": _read(flags.ca_bundle, read_text),
        "default_schema": flags.default_schema,
    }


_BUILDERS: Final[dict[str, Callable[[Flags, ReadText], dict[str, Any]]]] = {
    "http": _http,
    "ssh": _ssh,
    "postgres": _postgres,
}

# Credential shorthand: type -> the names of the parts after it, per kind.
_SHORTHAND: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "http": {
        "bearer": ("secret",),
        "header": ("header_name", "secret"),
        "basic": ("username", "secret"),
        "query": ("param", "secret"),
    },
    "ssh": {"private_key": ("secret",), "certificate": ()},
    "postgres": {
        "password": ("username", "secret"),
        "dynamic": ("admin_username", "admin_secret", "parent_role"),
    },
}
_SHAPES: Final = {
    "http": "bearer:SECRET, header:NAME:SECRET, basic:USER:SECRET or query:PARAM:SECRET",
    "ssh": "private_key:SECRET or certificate[:SECONDS]",
    "postgres": "password:USER:SECRET or dynamic:ADMIN_USER:ADMIN_SECRET:PARENT_ROLE",
}


def parse_credential(kind: str, text: str) -> dict[str, Any]:
    """The credential data of the shorthand ``text`` for ``kind``."""
    shapes = _SHORTHAND.get(kind)
    if shapes is None:
        raise TargetInputError(f"unknown target kind {kind[:40]!r}")
    type_, *parts = text.split(":")
    expected = shapes.get(type_)
    if kind == "ssh" and type_ == "certificate" and len(parts) == 1:
        return {"type": type_, "validity_seconds": _seconds(parts[0])}
    if expected is None or len(parts) != len(expected) or not all(parts):
        raise TargetInputError(f"--credential: expected {_SHAPES[kind]}")
    return {"type": type_, **dict(zip(expected, parts, strict=True))}


def _seconds(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise TargetInputError("--credential certificate:SECONDS: SECONDS is a whole number")
    return int(text)


def _read(path: Path | None, read_text: ReadText) -> str | None:
    return None if path is None else read_text(path)


def read_text_file(path: Path) -> str:
    """The text of ``path`` (UTF-8, at most ``MAX_FILE_BYTES``)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise TargetInputError(
            f"cannot read {path}: {(error.strerror or str(error)).lower()}"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise TargetInputError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TargetInputError(f"{path} is not UTF-8 text") from None


_ALIAS_REFUSED: Final = "aliases are not taken in a target file"


class _NoAliases(UniqueKeyLoader):
    """The safe loader without aliases: a target needs none, and a few hundred bytes of
    nested aliases expand to gigabytes when the spec is read."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, _ALIAS_REFUSED, event.start_mark)
        return super().compose_node(parent, index)


def spec_from_document(
    text: str, *, name: str, base: Path, read_text: ReadText = read_text_file
) -> tuple[str, dict[str, Any], dict[str, str] | None]:
    """``(kind, spec data, labels or None)`` of a YAML/JSON target document."""
    try:
        document = yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None)
        shown = problem == _ALIAS_REFUSED or str(problem).startswith("duplicate key")
        detail = f": {problem}" if shown else ""
        raise TargetInputError(f"not valid YAML or JSON{where}{detail}") from None
    except RecursionError:
        raise TargetInputError("not valid YAML or JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise TargetInputError("a target file is a mapping of field names to values")
    spec = dict(document)
    kind = spec.pop("kind", None)
    if not isinstance(kind, str) or kind not in KINDS:
        raise TargetInputError("kind: expected http, ssh or postgres")
    named = spec.pop("name", name)
    if named != name:
        raise TargetInputError(f"name: the file names {str(named)[:70]!r}, not {name!r}")
    labels = spec.pop("labels", None)
    if labels is not None and not _is_str_mapping(labels):
        raise TargetInputError("labels: expected a mapping of names to text")
    for key, target in _FILE_FIELDS.items():
        if key in spec:
            spec[target] = _file_field(spec, key, target, base, read_text)
    return kind, spec, labels


def _file_field(
    spec: dict[str, Any], key: str, target: str, base: Path, read_text: ReadText
) -> str:
    path = spec.pop(key)
    if target in spec:
        raise TargetInputError(f"{key}: {target} is given too")
    if not isinstance(path, str) or not path:
        raise TargetInputError(f"{key}: expected a file name")
    return read_text(base / path)


def _is_str_mapping(value: object) -> bool:
    if not isinstance(value, Mapping):
        return False
    return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
