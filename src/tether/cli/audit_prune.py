"""``tether audit prune``: archive the start of the audit trail into a file, then delete it
(:mod:`tether.audit.prune`; docs/audit.md, "Retention: archive and prune").

Straight on the node's database, with the node's master key (the marker is signed with the
access-token key under it). It may run while the node runs: the events are deleted in small
transactions, and the node appends meanwhile. Exit 0 when pruned (or a stopped prune
finished), 1 when the trail's state refuses it (it does not verify, a sink is behind, no
checkpoint there, the archive's path is taken), 2 on a bad option or an unusable database.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.common import EXIT_FAILED, fail
from tether.cli.nodeopts import DataDirOption, config_option, node_revisions, node_settings
from tether.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tether.audit.prune import Advance
    from tether.crypto.envelope import EnvelopeCipher


def prune_command(
    archive: Annotated[
        Path,
        typer.Option(
            "--archive", "-a", show_default=False, dir_okay=False,
            help="The file to archive the pruned events into (never overwritten).",
        ),
    ],
    through: Annotated[
        int | None,
        typer.Option(
            "--through", min=1, show_default=False, metavar="SEQ",
            help="Prune events up to this seq, which must have a signed checkpoint.",
        ),
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before", show_default=False, metavar="TIME",
            help="Prune up to the newest checkpoint made before TIME: RFC 3339, a date, or "
            "90d/12h ago.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        config_option("The node's config file (its database, data directory and audit.sinks)."),
    ] = None,
    data_dir: DataDirOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check everything and say what would be pruned; change "
                     "nothing."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was done as JSON.")] = False,
) -> None:  # fmt: skip
    """Archive the oldest events into a file that verifies on its own, then delete them.

    Refused (exit 1, nothing changed) unless the whole trail verifies, the point is a signed
    checkpoint before the trail's last event, and every SIEM sink has delivered the
    events (a disabled one too, once it has a cursor: it resumes from it). The deleted
    events are replaced in the database by a signed prune marker, which
    tether audit verify checks; check the archive with tether audit verify --archive FILE.
    Stopped midway, running the same command again finishes it. --dry-run checks
    everything and changes nothing.
    """
    if (through is None) == (before is None):
        fail("give exactly one of --through SEQ and --before TIME")
    moment = None if before is None else _moment(before)
    settings = node_settings(config, data_dir)
    cipher = _cipher(settings)
    from tether.cli.store import on_store

    with _bars(shown=not as_json and sys.stderr.isatty()) as (say, advance):
        done = on_store(settings, lambda engine: _run(engine, settings, cipher, through, moment,
                                                      archive, dry_run, say, advance))  # fmt: skip
    if as_json:
        typer.echo(json.dumps(done, sort_keys=True))
    elif dry_run:
        typer.echo(f"would prune events {done['first']} to {done['through']} ({done['events']} "
                   f"events) into {archive}: every check passed, nothing changed")  # fmt: skip
    elif done["resumed"]:
        typer.echo(f"finished the prune through {done['through']}: {done['deleted']} row(s) "
                   "deleted (its archive was written before)")  # fmt: skip
    else:
        typer.echo(
            f"pruned events {done['first']} to {done['through']} ({done['events']} events) into "
            f"{archive} (sha256 {done['sha256']}); {done['deleted']} row(s) deleted"
        )


async def _run(
    engine: AsyncEngine,
    settings: Settings,
    cipher: EnvelopeCipher,
    through: int | None,
    moment: datetime | None,
    archive: Path,
    dry_run: bool,
    say: Callable[[str], None],
    advance: Advance,
) -> dict[str, Any]:
    from tether.audit.prune import PruneRefused, checkpoint_before, prune
    from tether.crypto.envelope import DecryptionError
    from tether.identity.keystore import KeysUnverified, active_access_key

    async with engine.connect() as conn:
        if moment is not None:
            through = await checkpoint_before(conn, moment)
            if through is None:
                fail(f"no checkpoint was made before {moment.isoformat()}", EXIT_FAILED)
        try:
            key = await active_access_key(conn, cipher)
        except (KeysUnverified, DecryptionError) as error:
            fail(f"the node's signing key cannot be used: {error}")
    if key is None:
        fail("this database has no signing key yet (start tether serve once)")
    assert through is not None
    sinks = [sink.name for sink in settings.audit.sinks if sink.enabled]
    paused = [sink.name for sink in settings.audit.sinks if not sink.enabled]
    try:
        done = await prune(
            engine, through=through, archive=archive, key=key, cipher=cipher,
            head_file=settings.audit.head_file, sinks=sinks, paused=paused, now=datetime.now(UTC),
            progress=say, dry_run=dry_run, advance=advance,
        )  # fmt: skip
    except PruneRefused as error:
        fail(f"nothing pruned: {error}", EXIT_FAILED)
    return {"first": done.first, "through": done.through, "events": done.events,
            "sha256": done.sha256, "deleted": done.deleted, "resumed": done.resumed,
            "archive": str(archive), "dry_run": dry_run}  # fmt: skip


@contextmanager
def _bars(*, shown: bool) -> Iterator[tuple[Callable[[str], None], Advance]]:
    """How to say a line and advance a phase on standard error: a progress bar for each
    phase (archive, delete) above the lines when ``shown``, else the lines alone."""
    if not shown:
        yield (lambda line: typer.echo(line, err=True)), (lambda _phase, _done, _all: None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    tasks: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True)) as bars:

        def advance(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(f"{phase} events", total=total)
            bars.update(tasks[phase], completed=done, total=total)

        yield (lambda line: bars.console.print(line, markup=False, highlight=False)), advance


def _moment(spec: str) -> datetime:
    from tether.audit.timespec import TimeSpecError, parse_time_spec

    try:
        return parse_time_spec(spec, datetime.now(UTC))
    except TimeSpecError as error:
        fail(f"--before: {error}")


def _cipher(settings: Settings) -> EnvelopeCipher:
    """The node's master key (required: the marker is signed with a key under it), its
    sealer remembering the rows the node admitted (its revisions.json)."""
    from tether.cli.audit import master_cipher

    cipher = master_cipher(settings)
    if cipher is None:
        fail("no master key: set TETHER_MASTER_KEY or check --data-dir (a prune signs its "
             "marker with the node's key, under the master key)")  # fmt: skip
    return cipher.witnessed(node_revisions(settings))
