"""The store: the engine plus the queries the rest of Tether calls."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.store.database import StoreError, create_engine
from tether.store.migrate import upgrade
from tether.store.policy_loads import PolicyLoad, insert_policy_load, select_policy_loads


class Store:
    """Tether's persistent state behind one async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect to ``url`` and migrate it to the current schema; raises :class:`StoreError`."""
        engine = create_engine(url)
        try:
            await upgrade(engine)
        except (SQLAlchemyError, OSError) as error:
            await engine.dispose()
            raise StoreError(f"cannot open the database: {_short(error)}") from error
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def record_policy_load(self, load: PolicyLoad) -> int:
        """Persist one policy load attempt; returns its id."""
        async with self.engine.begin() as conn:
            return await insert_policy_load(conn, load)

    async def policy_loads(self, limit: int = 100) -> list[PolicyLoad]:
        """The most recent policy load attempts, newest first."""
        async with self.engine.connect() as conn:
            return await select_policy_loads(conn, limit)


def _short(error: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's background link."""
    cause = getattr(error, "orig", None) or error
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
