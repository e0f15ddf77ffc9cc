"""The shapes of secret names and target names.

A **secret name** is ``[A-Za-z0-9][A-Za-z0-9._/-]{0,127}``: ``/`` groups secrets
(``billing/api-token``), so a name is also a URL path in the admin API; segments that a
URL library would rewrite (empty, ``.`` or ``..``) and a trailing ``/`` are refused, so the
name the server sees is the name the operator typed. Names starting with ``tether/`` (in
any case) are **reserved** for Tether's own secrets (``tether/ssh-target-ca``): the admin
API and CLI neither list nor set them, and a target's credential may not name one, so an
administrator cannot point a target at Tether's own keys and have them sent upstream.

Also here, so that the command line can check input without importing the store: the
target kinds, the size limit of a secret value, and the rules of labels (as agents' labels:
at most 64, names ``[A-Za-z0-9][A-Za-z0-9._/-]{0,62}``, values text of at most 256
characters without control characters).

A **target name** is a DNS label, ``[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?``, so that
``<target>.<domain>`` host routing works and the name needs no escaping anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, TypeGuard

SECRET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
SECRET_NAME_TEXT: Final = (
    "1-128 characters of A-Z a-z 0-9 . _ / - starting with a letter or digit, "  # noqa: S105
    "without empty, '.' or '..' segments"
)
RESERVED_PREFIX: Final = "tether/"
MAX_SECRET_BYTES: Final = 64 * 1024

Kind = Literal["http", "ssh", "postgres"]
KINDS: Final[tuple[Kind, ...]] = ("http", "ssh", "postgres")

MAX_LABELS: Final = 64
_LABEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_LABEL_VALUE_CHARS: Final = 256
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

TARGET_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
TARGET_NAME_TEXT: Final = (
    "a DNS label: 1-63 characters of a-z 0-9 -, starting and ending with a letter or digit"
)


class InvalidName(ValueError):
    """A malformed or reserved name; the message says which rule it breaks."""


def is_secret_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a well-formed secret name (reserved ones included)."""
    if not isinstance(value, str) or SECRET_NAME.fullmatch(value) is None:
        return False
    return all(segment not in ("", ".", "..") for segment in value.split("/"))


def is_reserved(name: str) -> bool:
    """Whether ``name`` is in the namespace reserved for Tether's own secrets."""
    return name.lower().startswith(RESERVED_PREFIX)


def check_secret_name(value: object, *, allow_reserved: bool = False) -> str:
    """``value`` if it is a secret name an operator may use; raises :class:`InvalidName`."""
    if not is_secret_name(value):
        raise InvalidName(f"invalid secret name {_show(value)}: expected {SECRET_NAME_TEXT}")
    if not allow_reserved and is_reserved(value):
        raise InvalidName(f"secret name {value!r} is reserved for Tether's own use")
    return value


def is_target_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a well-formed target name."""
    return isinstance(value, str) and TARGET_NAME.fullmatch(value) is not None


def check_target_name(value: object) -> str:
    """``value`` if it is a target name; raises :class:`InvalidName`."""
    if not is_target_name(value):
        raise InvalidName(f"invalid target name {_show(value)}: expected {TARGET_NAME_TEXT}")
    return value


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """``labels`` if well formed, sorted and read-only; raises :class:`InvalidName`."""
    if len(labels) > MAX_LABELS:
        raise InvalidName(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_NAME.fullmatch(key):
            raise InvalidName(f"label name {_show(key)}: expected A-Z a-z 0-9 . _ / - (1-63)")
        if not isinstance(value, str) or len(value) > _LABEL_VALUE_CHARS or _CONTROL.search(value):
            raise InvalidName(f"label {key!r}: a value is text of at most 256 characters")
    return MappingProxyType(dict(sorted(labels.items())))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
