"""``tether sessions prune``: the recordings of the days before a cutoff removed
(:mod:`tether.audit.recordings_prune`); the audit trail keeps their sessions' events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tether.audit.recordings_prune import Day, PruneRefused, plan, remove
from tether.cli.common import EXIT_FAILED, fail
from tether.cli.nodeopts import ConfigOption, DataDirOption


def prune_command(
    before: Annotated[
        str,
        typer.Option(
            "--before", show_default=False, metavar="TIME",
            help="Remove the days that ended by TIME: RFC 3339, a date, or 90d (at least a "
            "day ago).",
        ),
    ],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    recordings: Annotated[
        Path | None,
        typer.Option("--recordings", show_default=False, file_okay=False,
                     help="The recordings directory. Default: <data_dir>/recordings."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:  # fmt: skip
    """Remove the recordings of whole UTC days before TIME.

    A day holding a session still being written (no summary, written within the last day)
    is kept. The audit trail keeps the sessions' events: tether sessions list then shows
    them as 'no recording'. Exit 1 when a day could not be removed.
    """
    from tether.audit.timespec import TimeSpecError, parse_time_spec
    from tether.cli.sessions import recordings_root

    now = datetime.now(UTC)
    try:
        cutoff = parse_time_spec(before, now)
    except TimeSpecError as error:
        fail(f"--before: {error}")
    root = recordings_root(config, data_dir, recordings)
    try:
        days = plan(root, cutoff, now)
    except PruneRefused as error:
        fail(str(error))
    if dry_run:
        _report(days, {}, cutoff, as_json=as_json, dry_run=True)
        return
    failed = {r.day.path: r.error for r in remove(root, days) if r.error is not None}
    _report(days, failed, cutoff, as_json=as_json, dry_run=False)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _report(
    days: list[Day], failed: dict[Path, str], cutoff: datetime, *, as_json: bool, dry_run: bool
) -> None:
    gone = [d for d in days if d.kept is None and d.path not in failed]
    if as_json:
        document: dict[str, Any] = {
            "before": cutoff.isoformat(),
            "dry_run": dry_run,
            "removed": [_row(d) for d in gone],
            "kept": [{**_row(d), "why": d.kept} for d in days if d.kept is not None],
            "failed": [{**_row(d), "why": failed[d.path]} for d in days if d.path in failed],
            "sessions": sum(d.sessions for d in gone),
            "bytes": sum(d.bytes for d in gone),
        }
        typer.echo(json.dumps(document, sort_keys=True))
        return
    if days:
        table = Table("day (UTC)", "sessions", "bytes", "")
        for day in days:
            state = day.kept or failed.get(day.path) or ("would remove" if dry_run else "removed")
            table.add_row(day.day.isoformat(), str(day.sessions), str(day.bytes), state)
        Console(stderr=True, highlight=False).print(table)
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(gone)} day(s) before {cutoff.isoformat()}: "
               f"{sum(d.sessions for d in gone)} session(s), {sum(d.bytes for d in gone)} "
               f"bytes; {len(days) - len(gone)} kept or failed")  # fmt: skip


def _row(day: Day) -> dict[str, Any]:
    return {"day": day.day.isoformat(), "path": str(day.path), "sessions": day.sessions,
            "bytes": day.bytes}  # fmt: skip
