"""The target registry: what each target is, how to reach it, which secret to use.

Rows hold the validated JSON form of the kind's spec (:mod:`tether.vault.target_specs`),
which names secrets and never contains one. Reading a row validates it again, so a row
edited behind Tether's back into something invalid fails closed (:class:`TargetError`)
instead of being used.

Every row is sealed (:mod:`tether.crypto.seal`, migration 0015): ``seal`` is the HMAC under
the master key of the row's name, kind, labels and spec, everything that decides where a
credential goes and how. Writing computes it; reading checks it before anything else, and
a row whose seal is missing or does not verify fails closed exactly like an invalid one
(:class:`TargetError`, logged as an error): whoever can write to the database without the
master key cannot point a target at a server of theirs. The timestamps are not sealed:
nothing decides on them.

Lookups by name (:meth:`TargetStore.get`, what front-ends call per request) are cached for
at most ``cache_ttl`` seconds, absent names included; a change through this object
invalidates the cache at once (:mod:`tether.vault.cache`), so this node sees it at the next
request and other nodes sharing the database within ``cache_ttl``.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Row, RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.crypto.revisions import row_revision
from tether.crypto.seal import RowSealer, SealValue, with_revision
from tether.vault import names
from tether.vault.cache import TtlCache
from tether.vault.names import InvalidName, check_target_name
from tether.vault.schema import targets
from tether.vault.target_specs import (
    HttpTargetSpec,
    PostgresTargetSpec,
    SpecError,
    SshTargetSpec,
    TargetSpec,
    parse_spec,
)

log = logging.getLogger(__name__)

SEALED_TABLE = "targets"


class TargetError(Exception):
    """A target that cannot be stored or used as given; the message says why."""


class TargetExists(TargetError):
    """``add`` of a name that is taken."""


class TargetNotFound(LookupError):
    """No target of that name."""


@dataclass(frozen=True)
class Target:
    """One registered target."""

    name: str
    kind: Literal["http", "ssh", "postgres"]
    labels: Mapping[str, str]
    spec: HttpTargetSpec | SshTargetSpec | PostgresTargetSpec
    created_at: datetime
    updated_at: datetime


class TargetStore:
    """Targets in the store's ``targets`` table; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        sealer: RowSealer,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache_ttl: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._sealer, self._clock = engine, sealer, clock
        self._cache: TtlCache[Target | None] = TtlCache(cache_ttl, clock=monotonic)

    @property
    def generation(self) -> int:
        """Bumped by every change made through this object (for single-flight readers)."""
        return self._cache.generation

    def cached(self, name: str) -> tuple[bool, Target | None]:
        """``(True, what get would answer)`` when ``get`` would answer from its cache
        without I/O; ``(False, None)`` otherwise."""
        return self._cache.get(name)

    async def get(self, name: str) -> Target | None:
        """The target called ``name``, or ``None`` (also for a malformed name)."""
        hit, cached = self._cache.get(name)
        if hit:
            return cached
        try:
            check_target_name(name)
        except InvalidName:
            return None
        generation = self._cache.generation
        query = select(targets).where(targets.c.name == name)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        found = None if row is None else self._target(row)
        self._cache.put(name, found, generation)
        return found

    async def list(self, kind: str | None = None) -> list[Target]:
        """Every target (of ``kind``, if given), by name; :class:`TargetError` if any row
        is invalid or does not verify."""
        return [self._target(row) for row in await self._rows(kind)]

    async def usable(self, kind: str | None = None) -> builtins.list[Target]:
        """The targets (of ``kind``, if given) whose rows validate and verify, by name; the
        others are left out (each logged), so that one bad row stops only itself."""
        found: builtins.list[Target] = []
        for row in await self._rows(kind):
            try:
                found.append(self._target(row))
            except TargetError as error:
                log.error("%s", error)
        return found

    async def _rows(self, kind: str | None) -> builtins.list[Row[Any]]:
        query = select(targets).order_by(targets.c.name)
        if kind is not None:
            query = query.where(targets.c.kind == kind)
        async with self._engine.connect() as conn:
            return list(await conn.execute(query))

    async def add(
        self,
        name: str,
        kind: str,
        spec: TargetSpec | Mapping[str, Any],
        labels: Mapping[str, str] | None = None,
    ) -> Target:
        """Register a new target; raises :class:`TargetExists`, :class:`TargetError`."""
        target = self._validated(name, kind, spec, labels, created_at=self._clock())
        revision = self._sealer.next_revision(SEALED_TABLE, name, 0)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(targets).values(self._sealed_row(target, revision)))
        except IntegrityError:
            raise TargetExists(f"target {name!r} already exists") from None
        finally:
            self._cache.invalidate(name)
        self._written(name, revision)
        return target

    async def replace(
        self,
        name: str,
        kind: str,
        spec: TargetSpec | Mapping[str, Any],
        labels: Mapping[str, str] | None = None,
    ) -> Target:
        """Replace a target's kind, spec and labels; raises :class:`TargetNotFound`."""
        target = self._validated(name, kind, spec, labels, created_at=self._clock())
        try:
            async with self._engine.begin() as conn:
                stored = select(targets.c.revision).where(targets.c.name == name)
                current = (await conn.execute(stored.with_for_update())).scalar_one_or_none()
                revision = self._sealer.next_revision(SEALED_TABLE, name, current or 0)
                values = self._sealed_row(target, revision)
                del values["name"], values["created_at"]
                statement = (
                    update(targets)
                    .where(targets.c.name == name)
                    .values(values)
                    .returning(targets.c.created_at)
                )
                created_at = (await conn.execute(statement)).scalar_one_or_none()
        finally:
            self._cache.invalidate(name)
        if created_at is None:
            raise TargetNotFound(f"no target named {name!r}")
        self._written(name, revision)
        return Target(
            target.name, target.kind, target.labels, target.spec, created_at, target.updated_at
        )

    async def remove(self, name: str) -> None:
        """Remove a target; raises :class:`TargetNotFound`."""
        try:
            async with self._engine.begin() as conn:
                statement = delete(targets).where(targets.c.name == name)
                gone = (await conn.execute(statement.returning(targets.c.revision))).first()
        finally:
            self._cache.invalidate(name)
        if gone is None:
            raise TargetNotFound(f"no target named {name!r}")
        # Removed is one more revision: the row written back is older than this node saw.
        self._written(name, self._sealer.next_revision(SEALED_TABLE, name, gone.revision or 0))

    def _sealed_row(self, target: Target, revision: int) -> dict[str, Any]:
        values = {**_row(target), "revision": revision}
        values["seal"] = self._sealer.seal(SEALED_TABLE, seal_columns(values))
        return values

    def _written(self, name: str, revision: int) -> None:
        """Once committed: this node never admits an older row of the target again (its
        file follows at the node's next poll)."""
        self._sealer.saw(SEALED_TABLE, name, revision)

    def _target(self, row: Row[Any]) -> Target:
        mapping = row._mapping
        if not self._sealer.verify(SEALED_TABLE, seal_columns(mapping), mapping["seal"]):
            state = "it has no seal" if mapping["seal"] is None else "its seal does not verify"
            log.error(
                "target %r refused: %s: the row was changed outside Tether (restore it with "
                "`tether target add --replace`; docs/vault.md, Tampering with the database)",
                row.name, state,
            )  # fmt: skip
            raise TargetError(f"stored target {row.name!r} is refused: {state}")
        revision, what = row_revision(mapping), f"target {row.name!r}"
        if not self._sealer.current(SEALED_TABLE, row.name, revision, what=what):
            raise TargetError(
                f"stored target {row.name!r} is refused: its row is older than one this node "
                "saw (put back; `tether target add --replace` writes it afresh)"
            )
        return _target(row)

    def _validated(
        self,
        name: str,
        kind: str,
        spec: TargetSpec | Mapping[str, Any],
        labels: Mapping[str, str] | None,
        *,
        created_at: datetime,
    ) -> Target:
        try:
            check_target_name(name)
            parsed = parse_spec(kind, spec if isinstance(spec, TargetSpec) else dict(spec))
        except (InvalidName, SpecError) as error:
            raise TargetError(str(error)) from None
        checked = check_labels(labels or {})
        valid_kind = cast(Literal["http", "ssh", "postgres"], kind)
        return Target(name, valid_kind, checked, parsed, created_at, created_at)


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """``labels`` if well formed, read-only; raises :class:`TargetError`."""
    try:
        return names.check_labels(labels)
    except InvalidName as error:
        raise TargetError(str(error)) from None


def seal_columns(row: Mapping[str, Any] | RowMapping) -> dict[str, SealValue]:
    """The sealed columns of a ``targets`` row (as written, or as read back), with its
    revision from migration 0025 on (a row sealed before it, revision 0, without it)."""
    return with_revision({name: row[name] for name in ("name", "kind", "labels", "spec")}, row)


def _row(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "kind": target.kind,
        "labels": dict(target.labels),
        "spec": target.spec.model_dump(mode="json"),
        "created_at": target.created_at,
        "updated_at": target.updated_at,
    }


def _target(row: Row[Any]) -> Target:
    try:
        spec = parse_spec(row.kind, row.spec)
        labels = check_labels(row.labels)
    except (SpecError, TargetError) as error:
        raise TargetError(f"stored target {row.name!r} is invalid: {error}") from None
    return Target(row.name, row.kind, labels, spec, row.created_at, row.updated_at)
