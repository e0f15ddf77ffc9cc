"""The secret store: named values, encrypted at rest, versioned, cached for a moment.

Security decisions:

* **Envelope encryption** (:class:`tether.crypto.envelope.EnvelopeCipher`) under the node's
  master key, with purpose ``vault.secret`` and the secret's name as associated data: the
  database holds only ciphertext, and a ciphertext copied onto another secret's row (or
  into another kind of record) fails authentication instead of decrypting.
* **Rotation is a new version.** Every ``put`` of an existing name increments ``version``
  in one conditional ``UPDATE`` (``version = version + 1``), so two concurrent rotations
  yield two versions and the last one written wins; neither is silently lost. Creation
  races are settled by the primary key: the loser retries as a rotation.
* **Freshness.** ``get`` caches a value for at most ``cache_ttl`` seconds
  (:mod:`tether.vault.cache`); a ``put`` or ``delete`` on this object invalidates at once,
  so this node uses a changed secret at its next lookup, other nodes within ``cache_ttl``.
* **Values never travel as text**: not in reprs, log lines, exception messages or
  :class:`SecretInfo`. Errors name the secret and the cause, never the value.
* Values are 1 byte to ``MAX_SECRET_BYTES``; an empty secret is refused (it is always a
  mistake, and injecting it would fail in a way that is hard to see).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.vault.cache import TtlCache
from tether.vault.names import MAX_SECRET_BYTES, InvalidName, check_secret_name
from tether.vault.schema import vault_secrets

PURPOSE: Final = "vault.secret"
MAX_DESCRIPTION_CHARS: Final = 500
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PUT_ATTEMPTS: Final = 8

PutMode = Literal["set", "create", "rotate"]


class SecretError(Exception):
    """A secret that cannot be stored or read; the message never holds its value."""


class SecretNotFound(LookupError):
    """No secret of that name."""


class SecretExists(SecretError):
    """``put(..., mode="create")`` of a name that exists."""


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about a secret: everything but its value."""

    name: str
    version: int
    created_at: datetime
    updated_at: datetime
    description: str | None


@dataclass(frozen=True, slots=True)
class _Current:
    value: bytes
    version: int

    def __repr__(self) -> str:
        return f"_Current(version={self.version})"


class SecretStore:
    """Secrets in the store's ``vault_secrets`` table; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        cipher: EnvelopeCipher,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache_ttl: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._cipher, self._clock = engine, cipher, clock
        self._cache: TtlCache[_Current | None] = TtlCache(cache_ttl, clock=monotonic)

    def __repr__(self) -> str:
        return f"SecretStore({self._cache!r})"

    @property
    def generation(self) -> int:
        """Bumped by every change made through this object (for single-flight readers)."""
        return self._cache.generation

    def cached(self, name: str) -> tuple[bool, bytes | None]:
        """``(True, the value get would answer)`` when ``get`` would answer it from its
        cache without I/O; ``(False, None)`` otherwise (a name cached as missing too: ``get``
        raises for it)."""
        hit, current = self._cache.get(name)
        if hit and current is not None:
            return True, current.value
        return False, None

    async def get(self, name: str) -> bytes:
        """The current value of ``name``; raises :class:`SecretNotFound`, :class:`SecretError`."""
        return (await self._current(name)).value

    async def get_versioned(self, name: str) -> tuple[bytes, int]:
        """The current value of ``name`` and its version (for caches keyed by version)."""
        current = await self._current(name)
        return current.value, current.version

    async def put(
        self,
        name: str,
        value: bytes,
        *,
        description: str | None = None,
        mode: PutMode = "set",
    ) -> SecretInfo:
        """Create ``name`` (version 1) or rotate it (next version); returns its info.

        ``mode="create"`` refuses an existing name (:class:`SecretExists`),
        ``mode="rotate"`` a missing one (:class:`SecretNotFound`). A ``description`` of
        ``None`` keeps the current one on rotation.
        """
        name = _valid_name(name)
        _check_value(value, description)
        ciphertext = self._cipher.encrypt_text(value, purpose=PURPOSE, name=name)
        try:
            for _ in range(_PUT_ATTEMPTS):
                if mode != "create" and (info := await self._rotate(name, ciphertext, description)):
                    return info
                if mode == "rotate":
                    raise SecretNotFound(f"no secret named {name!r}")
                if info := await self._create(name, ciphertext, description):
                    return info
                if mode == "create":
                    raise SecretExists(f"secret {name!r} already exists")
            raise SecretError(f"secret {name!r}: too many concurrent changes, try again")
        finally:
            self._cache.invalidate(name)

    async def info(self, name: str) -> SecretInfo:
        """What may be shown about ``name``; raises :class:`SecretNotFound`."""
        name = _valid_name(name)
        query = select(*_INFO_COLUMNS).where(vault_secrets.c.name == name)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is None:
            raise SecretNotFound(f"no secret named {name!r}")
        return SecretInfo(*row)

    async def list(self) -> list[SecretInfo]:
        """Every secret (reserved ones included), by name."""
        query = select(*_INFO_COLUMNS).order_by(vault_secrets.c.name)
        async with self._engine.connect() as conn:
            return [SecretInfo(*row) for row in await conn.execute(query)]

    async def delete(self, name: str) -> None:
        """Delete ``name`` for good; raises :class:`SecretNotFound`."""
        name = _valid_name(name)
        try:
            async with self._engine.begin() as conn:
                done = await conn.execute(delete(vault_secrets).where(vault_secrets.c.name == name))
        finally:
            self._cache.invalidate(name)
        if done.rowcount == 0:
            raise SecretNotFound(f"no secret named {name!r}")

    async def _current(self, name: str) -> _Current:
        hit, cached = self._cache.get(name)
        if not hit:
            generation = self._cache.generation
            cached = await self._load(name)
            self._cache.put(name, cached, generation)
        if cached is None:
            raise SecretNotFound(f"no secret named {name!r}")
        return cached

    async def _load(self, name: str) -> _Current | None:
        name = _valid_name(name)
        columns = vault_secrets.c
        query = select(columns.ciphertext, columns.version).where(columns.name == name)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is None:
            return None
        try:
            value = self._cipher.decrypt_text(row.ciphertext, purpose=PURPOSE, name=name)
        except DecryptionError as error:
            raise SecretError(f"secret {name!r} cannot be decrypted: {error}") from None
        return _Current(value, row.version)

    async def _rotate(
        self, name: str, ciphertext: str, description: str | None
    ) -> SecretInfo | None:
        columns = vault_secrets.c
        values: dict[str, object] = {
            "version": columns.version + 1,
            "ciphertext": ciphertext,
            "updated_at": self._clock(),
        }
        if description is not None:
            values["description"] = description
        statement = (
            update(vault_secrets)
            .where(columns.name == name)
            .values(values)
            .returning(*_INFO_COLUMNS)
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(statement)).one_or_none()
        return None if row is None else SecretInfo(*row)

    async def _create(
        self, name: str, ciphertext: str, description: str | None
    ) -> SecretInfo | None:
        now = self._clock()
        row = {
            "name": name,
            "version": 1,
            "ciphertext": ciphertext,
            "description": description,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(vault_secrets).values(row))
        except IntegrityError:
            return None  # created meanwhile by someone else: rotate it instead
        return SecretInfo(name, 1, now, now, description)


_INFO_COLUMNS: Final = (
    vault_secrets.c.name,
    vault_secrets.c.version,
    vault_secrets.c.created_at,
    vault_secrets.c.updated_at,
    vault_secrets.c.description,
)


def _valid_name(name: str) -> str:
    try:
        return check_secret_name(name, allow_reserved=True)
    except InvalidName as error:
        raise SecretError(str(error)) from None


def _check_value(value: bytes, description: str | None) -> None:
    if not isinstance(value, bytes | bytearray):
        raise SecretError("a secret value is bytes")
    if not value:
        raise SecretError("a secret value must not be empty")
    if len(value) > MAX_SECRET_BYTES:
        raise SecretError(f"a secret value is at most {MAX_SECRET_BYTES} bytes")
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        raise SecretError(f"a description is at most {MAX_DESCRIPTION_CHARS} characters")
    if description is not None and _CONTROL.search(description):  # a terminal's escapes
        raise SecretError("a description holds no control characters")


__all__ = [
    "MAX_SECRET_BYTES",
    "PURPOSE",
    "SecretError",
    "SecretExists",
    "SecretInfo",
    "SecretNotFound",
    "SecretStore",
]
