"""``tether audit sinks``: each SIEM sink's cursor, lag and last error.

Read straight from the node's database, like the other offline ``tether audit`` commands:
read-only, and it works while the node runs. The sinks listed are those configured
(``audit.sinks`` of ``--config``) and those with a cursor in the database (a sink removed
from the configuration keeps its cursor, shown as ``not configured``).

``--max-lag N`` makes it a monitoring check: exit 1 when any enabled sink is more than N
events behind, or is failing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.audit.sinks.cursors import printable
from tether.cli.common import EXIT_FAILED, fail
from tether.config import CONFIG_ENV, DATABASE_FILE, ConfigError, Settings, load_settings


def sinks(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", envvar=CONFIG_ENV, show_default=False,
            help="The node's config file (its database and its audit.sinks).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", "-d", show_default=False,
            help="The node's data directory (its SQLite database). Default: ./.tether.",
        ),
    ] = None,
    max_lag: Annotated[
        int | None,
        typer.Option(
            "--max-lag", min=0, show_default=False,
            help="Exit 1 if an enabled sink is more than this many events behind or failing.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per sink.")] = False,
) -> None:  # fmt: skip
    """Show each sink's delivered position, its lag behind the trail and its last error."""
    settings = _settings(config, data_dir)
    rows = _rows(settings)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
    else:
        _print_table(rows)
    if max_lag is not None and any(_behind(row, max_lag) for row in rows):
        raise typer.Exit(EXIT_FAILED)


def _settings(config: Path | None, data_dir: Path | None) -> Settings:
    overrides = {"data_dir": None if data_dir is None else str(data_dir)}
    try:
        settings = load_settings(config, overrides=overrides)
    except ConfigError as error:
        fail(str(error))
    if settings.database_url is None and not (settings.data_dir / DATABASE_FILE).is_file():
        fail(f"no Tether database at {settings.data_dir / DATABASE_FILE}")
    return settings


def _rows(settings: Settings) -> list[dict[str, Any]]:
    from sqlalchemy.exc import SQLAlchemyError

    from tether.audit.sinks.base import sink_status
    from tether.store.database import StoreError, create_engine

    configured = {sink.name: sink for sink in settings.audit.sinks}

    async def run() -> list[Any]:
        engine = create_engine(settings.database)
        try:
            return await sink_status(engine, configured)
        finally:
            await engine.dispose()

    try:
        statuses = asyncio.run(run())
    except StoreError as error:
        fail(str(error))
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        fail(f"sink cursors cannot be read (start tether serve once): {reason}")
    rows = []
    for status in statuses:
        sink = configured.get(status.name)
        rows.append(
            {
                "name": status.name,
                "kind": sink.kind if sink else None,
                "state": _state(sink.enabled if sink else None, status.last_error),
                "last_seq": status.last_seq,
                "head_seq": status.head_seq,
                "lag": status.lag,
                "updated_at": _iso(status.updated_at),
                "last_error": status.last_error,
                "last_error_at": _iso(status.last_error_at),
                "holder": status.holder,
            }
        )
    return rows


def _state(enabled: bool | None, error: str | None) -> str:
    if enabled is None:
        return "not configured"
    if not enabled:
        return "disabled"
    return "failing" if error else "ok"


def _behind(row: dict[str, Any], max_lag: int) -> bool:
    return row["state"] in ("ok", "failing") and (row["lag"] > max_lag or row["state"] != "ok")


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()


def _print_table(rows: list[dict[str, Any]]) -> None:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    if not rows:
        typer.echo("no sinks configured", err=True)
        return
    table = Table("sink", "kind", "state", "delivered", "head", "lag", "last error")
    for row in rows:
        error = printable(row["last_error"] or "")  # also what an older node stored raw
        if error and row["last_error_at"]:
            error = f"{row['last_error_at'][:19]} {error}"
        table.add_row(
            Text(printable(row["name"])), Text(row["kind"] or "-"), Text(row["state"]),
            str(row["last_seq"]), str(row["head_seq"]), str(row["lag"]), Text(error),
        )  # fmt: skip
    console.print(table)
