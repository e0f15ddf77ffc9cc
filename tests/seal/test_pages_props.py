"""Property test of the keyset pages that ``tether store rekey`` and ``store verify`` read
tables with (tether.store.integrity.pages): for any rows of a table with a composite primary
key (many sharing the first part, as votes share their request) and any page size, every row
comes exactly once, in primary-key order, and a page never exceeds its size; also while the
rows already read are changed between pages, as a rekey does to their seals."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, Table, Text, insert, update
from sqlalchemy.ext.asyncio import create_async_engine

from tether.store.integrity import pages

_metadata = MetaData()
_votes = Table(
    "votes",
    _metadata,
    Column("request_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("seal", Integer, nullable=False),
)

_keys = st.sets(
    st.tuples(st.sampled_from(["r1", "r2", "r10", "r2a", ""]), st.text(max_size=4)),
    max_size=40,
)


async def _read(keys: set[tuple[str, str]], size: int, touch: bool) -> list[list[tuple[str, str]]]:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_metadata.create_all)
            if keys:
                rows = [{"request_id": r, "user_id": u, "seal": 0} for r, u in keys]
                await conn.execute(insert(_votes), rows)
            read: list[list[tuple[str, str]]] = []
            async for page in pages(conn, _votes, size=size):
                read.append([(row["request_id"], row["user_id"]) for row in page])
                if touch:  # what a rekey does to the rows it read: their seal changes
                    await conn.execute(update(_votes).values(seal=_votes.c.seal + 1))
            return read
    finally:
        await engine.dispose()


@settings(max_examples=150, deadline=None)
@given(_keys, st.integers(1, 7), st.booleans())
def test_every_row_once_in_key_order(keys: set[tuple[str, str]], size: int, touch: bool) -> None:
    read = asyncio.run(_read(keys, size, touch))
    flat = [key for page in read for key in page]
    assert flat == sorted(keys)
    assert all(0 < len(page) <= size for page in read)
