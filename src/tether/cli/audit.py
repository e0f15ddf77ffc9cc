"""``tether audit``: verify, search and follow the audit trail.

Each command works in one of two ways:

* **offline** (the default): straight on the node's database, found from ``--config`` /
  ``--data-dir`` like ``tether serve`` finds it. Read-only: nothing is migrated or
  written, and it works while the node runs (SQLite is in WAL mode) or after it died.
* **through the admin API** with ``--server URL`` and the admin token
  (``TETHER_ADMIN_TOKEN`` or ``--token-file``): ``GET /v1/audit/verify`` and
  ``GET /v1/audit/events``.

Exit codes: ``verify`` exits 0 when the trail is intact, 1 when it was tampered with, 2
when it cannot be read; ``search`` and ``tail`` exit 0, or 2 on a bad option or an
unreadable trail. Through the API, the server's refusals have their usual codes (3
unreachable, 4 token refused; docs/cli.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from tether.cli.apiclient import AdminClient, TokenFile, admin_token
from tether.cli.audit_prune import prune_command
from tether.cli.audit_sinks import sinks
from tether.cli.auditview import (
    console,
    events_table,
    print_archive_report,
    print_json_lines,
    print_report,
    summary,
)
from tether.cli.common import EXIT_FAILED, EXIT_UNUSABLE, fail
from tether.cli.nodeopts import node_settings
from tether.config import CONFIG_ENV, DATABASE_FILE, Settings

if TYPE_CHECKING:
    from tether.crypto.envelope import EnvelopeCipher

T = TypeVar("T")

app = typer.Typer(
    help="The audit trail: verify its integrity, search it, follow it.",
    no_args_is_help=True,
    add_completion=False,
)

Config = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", envvar=CONFIG_ENV, show_default=False,
        help="The node's config file (for its database). Offline mode.",
    ),
]  # fmt: skip
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", "-d", show_default=False,
        help="The node's data directory (its SQLite database). Default: ./.tether.",
    ),
]  # fmt: skip
Server = Annotated[
    str | None,
    typer.Option(
        "--server", "-s", metavar="URL", show_default=False,
        help="Ask this Tether server's admin API instead of reading the database.",
    ),
]  # fmt: skip
AsJson = Annotated[bool, typer.Option("--json", help="JSON output (one event per line).")]


def _filter_option(name: str, what: str) -> Any:
    return typer.Option(f"--{name}", show_default=False, help=f"Only events of this {what}.")


Agent = Annotated[str | None, _filter_option("agent", "agent")]
Runtime = Annotated[str | None, _filter_option("runtime", "runtime")]
Task = Annotated[str | None, _filter_option("task", "task")]
User = Annotated[str | None, _filter_option("user", "user (delegation or admin)")]
Target = Annotated[str | None, _filter_option("target", "target")]
Kind = Annotated[str | None, _filter_option("kind", "kind (session.start, decision, ...)")]
Decision = Annotated[str | None, _filter_option("decision", "decision (allow, deny, ...)")]
Session = Annotated[str | None, _filter_option("session", "session id")]
Since = Annotated[
    str | None,
    typer.Option(
        "--since", show_default=False, metavar="TIME",
        help="Events at or after TIME: RFC 3339 (2026-11-29T10:00:00Z), a date, or 15m/2h/1d ago.",
    ),
]  # fmt: skip
Until = Annotated[
    str | None,
    typer.Option("--until", show_default=False, metavar="TIME", help="Events before TIME."),
]


app.command("sinks")(sinks)  # SIEM sinks' cursors and lag: tether.cli.audit_sinks
app.command("prune")(prune_command)  # archive and delete the oldest events: tether.cli.audit_prune


# --- verify --------------------------------------------------------------------------------


@app.command("verify")
def verify(
    config: Config = None,
    data_dir: DataDir = None,
    server: Server = None,
    token_file: TokenFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    archive: Annotated[
        Path | None,
        typer.Option(
            "--archive", "-a", show_default=False, dir_okay=False, exists=True,
            help="Check this archive file (written by tether audit prune) instead of the "
            "trail, and that a prune marker of the trail names it. Offline only.",
        ),
    ] = None,
) -> None:  # fmt: skip
    """Recompute the hash chain and check the signed checkpoints.

    Reports every changed, deleted, inserted or reordered event and any truncation of
    checkpointed events, by seq; and how many events after the last checkpoint nothing
    signed yet. A pruned trail starts after its newest signed prune marker. Exit 0: intact;
    1: tampered with; 2: the trail cannot be read.
    """
    if archive is not None:
        if server is not None:
            fail("--archive reads the database: it does not go with --server")
        _verify_archive(config, data_dir, archive, as_json)
    if server is not None:
        report = AdminClient(server, admin_token(token_file)).call("GET", "/v1/audit/verify")
    else:
        from tether.audit.verify import verify_trail

        settings = _load(config, data_dir)
        query = partial(
            verify_trail, head_file=settings.audit.head_file, cipher=master_cipher(settings)
        )
        report = _offline(config, data_dir, query).to_dict()
    if as_json:
        print_json_lines([report])
    else:
        print_report(report)
    raise typer.Exit(0 if report["ok"] else EXIT_FAILED)


def _verify_archive(
    config: Path | None, data_dir: Path | None, archive: Path, as_json: bool
) -> NoReturn:
    from tether.audit.archive import match_marker, read_lines, verify_archive
    from tether.audit.checkpoints import verification_keys
    from tether.audit.store import prunes

    settings = _load(config, data_dir)
    cipher = master_cipher(settings)

    async def check(conn: Any) -> dict[str, Any]:
        keys = await verification_keys(conn, cipher)
        try:
            with archive.open("rb") as stream:
                report = verify_archive(read_lines(stream), keys)
        except OSError as error:
            fail(f"the archive cannot be read: {error}")
        marker = match_marker(report, await prunes(conn), keys)
        document = report.to_dict()
        document["marker"] = None if marker is None else marker.seq
        document["keys_authenticated"] = cipher is not None
        return document

    report = _offline(config, data_dir, check)
    if as_json:
        print_json_lines([report])
    else:
        print_archive_report(report)
    raise typer.Exit(0 if report["ok"] else EXIT_FAILED)


# --- search ----------------------------------------------------------------------------


@app.command("search")
def search(
    agent: Agent = None, runtime: Runtime = None, task: Task = None, user: User = None,
    target: Target = None, kind: Kind = None, decision: Decision = None,
    session: Session = None, since: Since = None, until: Until = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000,
                                       help="At most this many (the newest) events.")] = 100,
    as_json: AsJson = False,
    config: Config = None, data_dir: DataDir = None,
    server: Server = None, token_file: TokenFile = None,
) -> None:  # fmt: skip
    """Find events: every filter given must match (* matches any run of characters).

    Shows the newest LIMIT matches, oldest first, as a table or JSON Lines.
    """
    filters = _filters(locals())
    if server is not None:
        answer = _api_events(server, token_file, filters, limit=limit)
        events = answer["events"]
    else:
        from tether.audit.canonical import event_json
        from tether.audit.store import search_events

        where = _where(filters)
        found = _offline(config, data_dir, lambda conn: search_events(conn, where, limit=limit))
        events = [event_json(e) for e in found]
    if as_json:
        print_json_lines(events)
    elif events:
        console().print(events_table(events))
    else:
        typer.echo("no matching events", err=True)


# --- tail ------------------------------------------------------------------------------


@app.command("tail")
def tail(
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new events.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, max=10_000,
                                       help="Show this many recent events first.")] = 10,
    interval: Annotated[float, typer.Option("--interval", min=0.05, max=60,
                                            help="Seconds between polls (offline).")] = 1.0,
    agent: Agent = None, runtime: Runtime = None, task: Task = None, user: User = None,
    target: Target = None, kind: Kind = None, decision: Decision = None,
    session: Session = None, as_json: AsJson = False,
    config: Config = None, data_dir: DataDir = None,
    server: Server = None, token_file: TokenFile = None,
) -> None:  # fmt: skip
    """Print the last events (matching the filters), and with -f every new one as it
    is committed, until interrupted."""
    filters = _filters(locals())
    show = _printer(as_json)
    try:
        if server is not None:
            _tail_api(server, token_file, filters, lines, follow, show)
        else:
            _tail_offline(config, data_dir, filters, lines, follow, interval, show)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _printer(as_json: bool) -> Callable[[list[dict[str, Any]]], None]:
    if as_json:
        return print_json_lines
    out = console()

    def show(events: list[dict[str, Any]]) -> None:
        for e in events:
            when = str(e["time"]).replace("T", " ").removesuffix("Z")[:23]
            who = e.get("agent") or e.get("user") or "-"
            verdict = f" [{e['decision']}]" if e.get("decision") else ""
            line = f"{e['seq']:>8} {when} {e['kind']:<14} {who} → {e.get('target') or '-'}: "
            out.print(line + summary(e) + verdict, markup=False, soft_wrap=True)

    return show


def _tail_offline(
    config: Path | None,
    data_dir: Path | None,
    filters: dict[str, Any],
    lines: int,
    follow: bool,
    interval: float,
    show: Callable[[list[dict[str, Any]]], None],
) -> None:
    from tether.audit.canonical import event_json
    from tether.audit.store import chain_head, search_events
    from tether.audit.store import follow as follow_page

    where = _where(filters)

    async def first(conn: Any) -> tuple[list[Any], int]:
        head = (await chain_head(conn)).seq
        found = await search_events(conn, where, limit=lines) if lines else []
        return found, head

    found, cursor = _offline(config, data_dir, first)
    show([event_json(e) for e in found])
    while follow:
        time.sleep(interval)
        page = partial(follow_page, where=where, after_seq=cursor, limit=1000)
        found, cursor = _offline(config, data_dir, page)
        show([event_json(e) for e in found])


def _tail_api(
    server: str,
    token_file: Path | None,
    filters: dict[str, Any],
    lines: int,
    follow: bool,
    show: Callable[[list[dict[str, Any]]], None],
) -> None:
    token = admin_token(token_file)
    answer = _api_events(server, None, filters, limit=max(lines, 1), token=token)
    show(answer["events"][-lines:] if lines else [])
    cursor = answer["last_seq"] or 0
    if not answer["events"]:
        cursor = _api_events(server, None, {}, limit=1, token=token)["last_seq"] or 0
    while follow:
        answer = _api_events(
            server, None, filters, limit=1000, token=token, after_seq=cursor, wait=20
        )
        show(answer["events"])
        cursor = answer["last_seq"] or cursor


# --- shared ----------------------------------------------------------------------------

_FILTERS = ("agent", "runtime", "task", "user", "target", "kind", "decision", "session")


def _filters(arguments: dict[str, Any]) -> dict[str, Any]:
    """The filter options given (and ``since``/``until``), kind checked."""
    chosen = {k: arguments.get(k) for k in (*_FILTERS, "since", "until")}
    kind = chosen["kind"]
    if kind is not None and "*" not in kind:
        from tether.audit.events import KINDS

        if kind not in KINDS:
            fail(f"--kind: unknown kind {kind!r}; one of {', '.join(sorted(KINDS))}")
    return {k: v for k, v in chosen.items() if v is not None}


def _where(filters: dict[str, Any]) -> Any:
    from tether.audit.store import EventFilter
    from tether.audit.timespec import TimeSpecError, parse_time_spec

    now = datetime.now(UTC)
    values = {("session_id" if k == "session" else k): v for k, v in filters.items()}
    for bound in ("since", "until"):
        if bound in values:
            try:
                values[bound] = parse_time_spec(values[bound], now)
            except TimeSpecError as error:
                fail(f"--{bound}: {error}")
    return EventFilter(**values)


def _api_events(
    server: str,
    token_file: Path | None,
    filters: dict[str, Any],
    *,
    limit: int,
    token: str | None = None,
    after_seq: int | None = None,
    wait: float = 0,
) -> Any:
    params = {k: str(v) for k, v in filters.items()}
    params["limit"] = str(limit)
    if after_seq is not None:
        params.update(after_seq=str(after_seq), wait=str(wait))
    client = AdminClient(server, token or admin_token(token_file))
    return client.call("GET", "/v1/audit/events", params=params)


def _offline(config: Path | None, data_dir: Path | None, query: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``query`` on a read-only connection to the node's database; exits 2 if the
    database or its audit trail cannot be read."""
    from sqlalchemy.exc import SQLAlchemyError

    from tether.store.database import StoreError, create_engine

    database = _database(config, data_dir)

    async def run() -> T:
        engine = create_engine(database)
        try:
            async with engine.connect() as conn:
                return await query(conn)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except StoreError as error:
        fail(str(error))
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        if "audit_events" in reason or "audit_checkpoints" in reason:
            fail(f"this database has no audit trail yet (start tether serve once): {reason}")
        fail(f"the audit trail cannot be read: {reason}")


def master_cipher(settings: Settings) -> EnvelopeCipher | None:
    """The node's master key when this machine holds it (``TETHER_MASTER_KEY`` or
    ``<data_dir>/master.key``; never created here): verify then trusts only signing keys
    sealed by it. None when absent: verify trusts the keys the database holds, and says so."""
    from tether.crypto.envelope import EnvelopeCipher
    from tether.crypto.masterkey import (
        MASTER_KEY_ENV,
        MASTER_KEY_FILE,
        MasterKeyError,
        load_master_key,
    )

    if MASTER_KEY_ENV not in os.environ and not (settings.data_dir / MASTER_KEY_FILE).exists():
        return None
    try:
        return EnvelopeCipher(load_master_key(settings.data_dir))
    except MasterKeyError as error:
        fail(str(error))


def _load(config: Path | None, data_dir: Path | None) -> Settings:
    return node_settings(config, data_dir)


def _database(config: Path | None, data_dir: Path | None) -> str:
    settings = _load(config, data_dir)
    url = settings.database
    if settings.database_url is None:
        path = settings.data_dir / DATABASE_FILE
        if not path.is_file():
            fail(f"no Tether database at {path} (use --data-dir or --config)", EXIT_UNUSABLE)
    return url
