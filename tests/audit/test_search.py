"""Search and follow on a real store: every filter, globs, time bounds, paging, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.audit.conftest import Trail, sample
from tether.audit import store
from tether.audit.store import EventFilter

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


async def search(trail: Trail, where: EventFilter, **options: int) -> list[int]:
    async with trail.engine.connect() as conn:
        found = await store.search_events(conn, where, **options)
    return [e.seq or 0 for e in found]


async def test_every_filter_and_their_combination(trail: Trail) -> None:
    for i in range(40):
        await trail.log.append(sample(i, time=T0 + timedelta(minutes=i), user=f"u{i % 2}"))
    # sample(i) is event i + 1: agent-(i%3), T-(i%5), target-(i%2), s-(i//10), kinds by i%4
    assert await search(trail, EventFilter(agent="agent-1")) == [i + 1 for i in range(1, 40, 3)]
    assert await search(trail, EventFilter(task="T-4", target="target-1")) == [10, 20, 30, 40]
    assert await search(trail, EventFilter(kind="sql.statement", session_id="s-0")) == [3, 7]
    assert await search(trail, EventFilter(decision="deny", runtime="rt-1")) == [
        i + 1 for i in range(0, 40, 4)
    ]
    expected = [4, 10, 16, 22, 28, 34, 40]
    assert await search(trail, EventFilter(user="u1", agent="agent-0")) == expected
    assert await search(trail, EventFilter(agent="nobody")) == []
    window = EventFilter(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=8))
    assert await search(trail, window) == [6, 7, 8]


async def test_globs_match_runs_and_escape_sql_wildcards(trail: Trail) -> None:
    names = ["db_prod", "dbXprod", "db%prod", "web-1", "db-prod-2", "DB-upper", "db[1]?"]
    for i, target in enumerate(names):
        await trail.log.append(sample(i, target=target))
    assert await search(trail, EventFilter(target="db*")) == [1, 2, 3, 5, 7]  # case counts
    assert await search(trail, EventFilter(target="db[1]?*")) == [7]
    assert await search(trail, EventFilter(target="db_prod")) == [1]  # "_" is not a wildcard
    assert await search(trail, EventFilter(target="db%*")) == [3]
    assert await search(trail, EventFilter(target="*prod*")) == [1, 2, 3, 5]
    assert await search(trail, EventFilter(kind="ss*")) == [2, 6]


async def test_limit_keeps_the_newest_and_paging_walks_the_rest(trail: Trail) -> None:
    await trail.append(30)
    assert await search(trail, EventFilter(), limit=5) == [26, 27, 28, 29, 30]
    assert await search(trail, EventFilter(), limit=5, before_seq=26) == [21, 22, 23, 24, 25]
    assert await search(trail, EventFilter(), limit=3, after_seq=10) == [11, 12, 13]


async def test_follow_moves_its_cursor_past_events_that_do_not_match(trail: Trail) -> None:
    await trail.append(12)
    only_agent_0 = EventFilter(agent="agent-0")
    async with trail.engine.connect() as conn:
        found, cursor = await store.follow(conn, only_agent_0, 0, limit=100)
        assert [e.seq for e in found] == [1, 4, 7, 10]
        assert cursor == 12  # the head: 11 and 12 need not be read again
        found, cursor = await store.follow(conn, only_agent_0, 0, limit=2)
        assert ([e.seq for e in found], cursor) == ([1, 4], 4)  # a full page: more may match
        found, again = await store.follow(conn, only_agent_0, 12, limit=100)
        assert (found, again) == ([], 12)
