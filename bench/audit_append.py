"""Durable hash-chained audit appends per second, and the latency an event adds to an action.

Run: ``.venv/bin/python bench/audit_append.py [--json] [--seconds S] [--pg-url URL]
[--backends sqlite-full,sqlite-normal,postgresql] [--emitters 1,8,64,256,1024]
[--idle-ms M]``.

For each backend and each number of concurrent emitters (default 1, 8, 64, 256 and 1024:
a broker under load has hundreds of sessions auditing at once, and below about twice the
events one batch takes the rate measures the round trip more than the throughput), two
series run for ``--seconds`` each on a fresh database:

* ``append``: each emitter appends events through the ``AuditLog`` writer (canonical text,
  hash chain, group commit, signed checkpoints every 1,000 events) and waits for the
  acknowledgement, that is for COMMIT. The events, all distinct, are built by
  ``Auditor.http_exchange_event`` before the clock starts: this is the trail's append rate.
* ``emit``: the same, but each emitter also builds its event on the clock, through
  ``Auditor.http_exchange_event`` and ``emit`` (make the event, redact its headers and
  strings, check it): what one HTTP exchange costs a front-end in all.
* ``baseline``: each emitter inserts the same row, unchained, in a transaction of its own,
  with the same durability (what a naive durable audit log does): on SQLite through one
  ``sqlite3`` connection in one thread (SQLite has one writer anyway), on PostgreSQL
  through a pool of up to 16 asyncpg connections.

``per_second`` is acknowledged events over elapsed time; ``p50_ms``/``p99_ms`` are the
append-to-acknowledgement latencies, that is what auditing adds to an action before its
effect may be returned; ``batch`` is the mean number of events per commit;
``x_baseline`` compares with the baseline at the same concurrency; ``cpu_us`` is the
CPU time per chained event of this process (every thread) and, on SQLite, of the audit
writer's own process (its start-up included), the figure that least depends on what else
the machine runs; PostgreSQL's server is not counted. Compare ratios across
machines, not rates. After every chained series, ``tether audit verify``'s check runs and
must find the chain intact, or the benchmark exits 1.

Backends: ``sqlite-full`` (WAL, ``synchronous=FULL``: Tether's default, survives power
loss), ``sqlite-normal`` (WAL, ``NORMAL``: survives a killed process only), ``postgresql``
(``fsync=on``, ``synchronous_commit=on``: a server started for the run from the Debian
binaries like the tests' fixture, or ``--pg-url``).

``--idle-ms M`` makes each emitter rest M milliseconds after each event (off the clock),
as a front-end at one connection does between requests: with ``--emitters 1 --idle-ms 3``
the latencies show what an event costs once the machine went idle in between, against the
baseline's, which rests the same (bench/README.md: on a VM both grow).

The process runs with the node's GIL switch interval (``tether.node.tune_interpreter``), as
``tether serve`` does; ``--switch-interval`` changes it.

Goal (from the issue; informational, never an exit status): >= 20,000 appends/s on SQLite,
judged on the ``append`` series.
``--json`` prints one object per series. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.pg: the same PostgreSQL launcher as the tests

from tests.audit.conftest import store_signing_key  # noqa: E402

from tether.audit.canonical import format_time  # noqa: E402
from tether.audit.emit import Auditor, Subject  # noqa: E402
from tether.audit.events import AuditEvent  # noqa: E402
from tether.audit.log import AuditLog  # noqa: E402
from tether.audit.sqlite_process import sqlite_time  # noqa: E402
from tether.audit.store import event_row  # noqa: E402
from tether.audit.verify import verify_trail  # noqa: E402
from tether.audit.writers import COLUMNS, insert_sql  # noqa: E402
from tether.identity.keys import SigningKey  # noqa: E402
from tether.node import SWITCH_INTERVAL_SECONDS, freeze_startup_heap  # noqa: E402
from tether.store import Store  # noqa: E402

GOAL = 20_000
KINDS = ("append", "emit")
BACKENDS = ("sqlite-full", "sqlite-normal", "postgresql")
# Events built ahead for the append series, per second of it (more than it can take).
PREBUILT_PER_SECOND = 40_000
WHO = Subject(agent="billing-bot", runtime="k8s/prod/b-7f9c", task="T-118", session_id="s-1",
              source_ip="10.1.2.3")  # fmt: skip
HEADERS = {"authorization": "Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln",
           "accept": "application/json", "user-agent": "agent-sdk/1.0"}  # fmt: skip


@dataclass
class Series:
    backend: str
    kind: str
    emitters: int
    events: int
    seconds: float
    latencies: list[float]
    batches: int | None = None
    cpu_seconds: float | None = None

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "backend": self.backend,
            "kind": self.kind,
            "emitters": self.emitters,
            "events": self.events,
            "per_second": round(self.events / self.seconds, 1),
            "p50_ms": round(statistics.median(lat) * 1000, 3),
            "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000 if len(lat) > 1 else 0, 3),
            "batch": round(self.events / self.batches, 1) if self.batches else None,
            "cpu_us": round(self.cpu_seconds / self.events * 1e6, 1) if self.cpu_seconds else None,
        }


async def run_emitters(
    emitters: int,
    seconds: float,
    one: Callable[[int], Awaitable[Any]],
    limit: int | None = None,
    *,
    idle: float = 0.0,
) -> tuple[int, float, list[float]]:
    """``emitters`` tasks each awaiting ``one(i)`` in a loop for ``seconds`` (and only for
    ``i`` below ``limit``, if given), resting ``idle`` seconds after each (off the clock)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    end = limit if limit is not None else sys.maxsize

    async def emitter(n: int) -> None:
        i = n
        while time.perf_counter() < deadline and i < end:
            began = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - began)
            i += emitters
            if idle:
                await asyncio.sleep(idle)

    started = time.perf_counter()
    await asyncio.gather(*(emitter(n) for n in range(emitters)))
    return len(latencies), time.perf_counter() - started, latencies


def exchange(auditor: Auditor, i: int) -> Awaitable[int]:
    """One HTTP exchange audited through the typed API (the event of both series)."""
    return auditor.emit(auditor.http_exchange_event(
        WHO, target="billing-api", method="GET", path=f"/v1/invoices/{i}", status=200,
        request_headers=HEADERS, bytes_in=120, bytes_out=2048, duration_ms=3.5,
        decision="allow", rule="billing-read",
    ))  # fmt: skip


class Collected:
    """Takes the place of the AuditLog to keep the events the Auditor builds."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append_position(self, event: AuditEvent) -> tuple[int, str, str]:
        self.events.append(event)
        return len(self.events), "", ""


_built: list[AuditEvent] = []  # one pool for every append series (each has its own database)


async def built_events(count: int) -> list[AuditEvent]:
    if len(_built) < count:
        progress(f"building {count - len(_built)} events for the append series...")
        collected = Collected()
        auditor = Auditor(collected)  # type: ignore[arg-type]
        for i in range(len(_built), count):
            await exchange(auditor, i)
        _built.extend(collected.events)
    return _built[:count]


async def chained(backend: str, url: str, emitters: int, seconds: float, sync: str,
                  kind: str, idle: float = 0.0) -> Series:  # fmt: skip
    """The ``append`` or the ``emit`` series (module docstring)."""
    events = await built_events(PREBUILT_PER_SECOND * int(seconds + 1)) if kind == "append" else []
    store = await Store.open(url)
    key = SigningKey.generate(time.time())
    await store_signing_key(store.engine, key)
    children = children_cpu()
    log = AuditLog(store.engine, lambda: key, sqlite_synchronous=sync)  # type: ignore[arg-type]
    await log.start()
    auditor = Auditor(log)

    async def emit(i: int) -> int:
        return await exchange(auditor, i)

    async def append(i: int) -> Any:
        return await log.append_position(events[i])

    freeze_startup_heap()  # as a node does once it serves (the event pool is start-up here)
    try:
        cpu = time.process_time()
        count, elapsed, latencies = await run_emitters(
            emitters,
            seconds,
            append if kind == "append" else emit,
            limit=len(events) or None,
            idle=idle,
        )
        cpu = time.process_time() - cpu
        batches = log.batches
    finally:
        await log.close()
    cpu += children_cpu() - children  # SQLite's writer process, reaped at close
    async with store.engine.connect() as conn:
        report = await verify_trail(conn)
    await store.close()
    if not report.ok or report.events != count:
        raise SystemExit(f"{backend}: the chain does not verify: {report.findings[:3]}")
    return Series(backend, kind, emitters, count, elapsed, latencies, batches, cpu)


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended (the SQLite writer process
    once the log is closed)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def baseline_row(sqlite: bool) -> tuple[Any, ...]:
    """The row of an event like the chained series', in column order, hashes dummy."""
    event = AuditEvent(
        kind="http.exchange", agent=WHO.agent, runtime=WHO.runtime, task=WHO.task,
        session_id=WHO.session_id, source_ip=WHO.source_ip, target="billing-api",
        action={"method": "GET", "path": "/v1/invoices/1", "status": 200,
                "request_headers": {**HEADERS, "authorization": "[REDACTED]"}},
        bytes_in=120, bytes_out=2048, duration_ms=3.5, decision="allow", rule="billing-read",
    )  # fmt: skip
    row = event_row(event.chained(1, "0" * 64, "0" * 64))
    if sqlite:
        row["time"] = sqlite_time(format_time(event.time))
    return tuple(row[column] for column in COLUMNS)


async def baseline_sqlite(backend: str, url: str, emitters: int, seconds: float,
                          sync: str, idle: float = 0.0) -> Series:  # fmt: skip
    store = await Store.open(url)
    await store.close()
    path = url.removeprefix("sqlite+aiosqlite:///")
    executor = ThreadPoolExecutor(1)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    insert = insert_sql("audit_events", COLUMNS, lambda _: "?")
    template = baseline_row(sqlite=True)
    loop = asyncio.get_running_loop()

    def write(i: int) -> None:
        db.execute("BEGIN")
        db.execute(insert, (i + 1, *template[1:]))
        db.execute("COMMIT")

    async def one(i: int) -> None:
        await loop.run_in_executor(executor, write, i)

    try:
        count, elapsed, latencies = await run_emitters(emitters, seconds, one, idle=idle)
    finally:
        db.close()
        executor.shutdown()
    return Series(backend, "baseline", emitters, count, elapsed, latencies)


async def baseline_postgres(
    backend: str, url: str, emitters: int, seconds: float, idle: float = 0.0
) -> Series:
    import asyncpg  # type: ignore[import-untyped]

    store = await Store.open(url)
    await store.close()
    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(plain, min_size=1, max_size=min(emitters, 16))
    insert = insert_sql("audit_events", COLUMNS, lambda i: f"${i}")
    template = baseline_row(sqlite=False)

    async def one(i: int) -> None:
        await pool.execute(insert, i + 1, *template[1:])

    try:
        count, elapsed, latencies = await run_emitters(emitters, seconds, one, idle=idle)
    finally:
        await pool.close()
    return Series(backend, "baseline", emitters, count, elapsed, latencies)


class Databases:
    """Fresh databases: SQLite files in a temporary directory, PostgreSQL databases."""

    def __init__(self, pg_url: str | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
        self.pg_url = pg_url
        self.server: Any = None  # tests.pg.PostgresServer once started

    def sqlite(self) -> str:
        return f"sqlite+aiosqlite:///{self.dir / secrets.token_hex(6)}.db"

    def postgresql(self) -> str:
        if self.pg_url is not None:
            return self.pg_url
        if self.server is None:
            from tests import pg

            # Durable, unlike the tests' server: the benchmark measures commits to disk.
            pg._SERVER_SETTINGS.update(fsync="on", synchronous_commit="on",
                                       full_page_writes="on", shared_buffers="128MB")  # fmt: skip
            progress("starting PostgreSQL (fsync on)...")
            self.server = pg.PostgresServer.start()
        name = f"bench_{secrets.token_hex(6)}"
        self.server.create_database(name)
        return str(self.server.url(name))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    databases = Databases(args.pg_url)
    rows: list[dict[str, Any]] = []
    try:
        for backend in args.backends:
            for emitters in args.emitters:
                rows += await measure_pair(
                    databases, backend, emitters, args.seconds, args.idle_ms / 1000
                )
    finally:
        databases.close()
    return rows


async def measure_pair(databases: Databases, backend: str, emitters: int,
                       seconds: float, idle: float) -> list[dict[str, Any]]:  # fmt: skip
    progress(f"{backend}, {emitters} emitters...")
    if backend == "postgresql":
        url = databases.postgresql
        base = await baseline_postgres(backend, url(), emitters, seconds, idle)
        sync = "full"
    else:
        url = databases.sqlite
        sync = backend.removeprefix("sqlite-")
        base = await baseline_sqlite(backend, url(), emitters, seconds, sync, idle)
    series = [await chained(backend, url(), emitters, seconds, sync, kind, idle)
              for kind in KINDS]  # fmt: skip
    base_row = base.row()
    base_row["x_baseline"] = 1.0
    rows = [base_row]
    for one in series:
        row = one.row()
        row["x_baseline"] = round(row["per_second"] / base_row["per_second"], 2)
        if backend.startswith("sqlite") and one.kind == "append" and not idle:  # back to back
            row["goal"], row["met"] = GOAL, row["per_second"] >= GOAL
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("backend", "kind", "emitters", "per_second", "p50_ms", "p99_ms", "batch",
              "cpu_us", "x_baseline")  # fmt: skip
    print("  ".join(f"{h:>13}" for h in header))
    for row in rows:
        print("  ".join(f"{'-' if row.get(h) is None else row[h]!s:>13}" for h in header))
    best = max((r for r in rows if r["kind"] == "append" and "goal" in r),
               key=lambda r: r["per_second"], default=None)  # fmt: skip
    if best is not None:
        verdict = "met" if best["met"] else "not met"
        print(f"\ngoal {GOAL} appends/s on SQLite: {verdict} (best {best['per_second']}/s, "
              f"{best['backend']}, {best['emitters']} emitters)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--seconds", type=float, default=3.0, help="per series (default 3)")
    parser.add_argument("--pg-url", help="an existing PostgreSQL database (asyncpg URL)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        type=lambda s: s.split(","))  # fmt: skip
    parser.add_argument("--emitters", default="1,8,64,256,1024",
                        type=lambda s: [int(n) for n in s.split(",")])  # fmt: skip
    parser.add_argument("--idle-ms", type=float, default=0.0,
                        help="each emitter rests this long after each event, off the clock "
                             "(default 0: back to back)")  # fmt: skip
    parser.add_argument("--switch-interval", type=float, default=SWITCH_INTERVAL_SECONDS,
                        help="GIL switch interval in seconds (default: the node's)")  # fmt: skip
    args = parser.parse_args()
    if not args.switch_interval > 0:
        parser.error("--switch-interval must be a positive number of seconds")
    if not args.seconds > 0:
        parser.error("--seconds must be a positive number")
    if not 0 <= args.idle_ms <= 60_000:
        parser.error("--idle-ms must be between 0 and 60000")
    if unknown := sorted(set(args.backends) - set(BACKENDS)):
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if any(n < 1 for n in args.emitters):
        parser.error("--emitters must be positive integers")
    sys.setswitchinterval(args.switch_interval)
    rows = uvloop.run(measure(args))  # the node's loop
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
