"""``tether sessions``: list, show, replay, export and prune session recordings.

It reads the recordings directory of a node (``<data_dir>/recordings``, or ``--recordings``)
directly, without a server: whoever can run it can read that directory anyway. ``list``
also reads the node's audit trail (``session.start`` and ``session.end`` events, through
:mod:`tether.audit.sessions_index`), so that sessions that left no recording (SQL, MCP)
are listed too; a database that cannot be read is skipped with a warning.

Everything a recording holds was produced by an agent, so names and values are shown with
terminal control stripped (:func:`~tether.audit.recordings_play.strip_ansi`). ``replay``
shows the output as the terminal did, but through
:class:`~tether.audit.recordings_play.SafeTerminal`, which drops the sequences that reach
beyond drawing (clipboard writes, titles, requests the terminal answers); ``--raw`` writes
every byte, for a recording the viewer trusts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Final, TextIO

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.audit.recordings import RecordingError, TransferRecord, file_sha256, session_of
from tether.audit.recordings_play import cast_lines, plain_text_pieces, replay, strip_ansi
from tether.audit.recordings_read import (
    CastStream,
    RecordedSession,
    find_recording,
    iter_recordings,
    session_transfers,
    stream_cast,
)
from tether.cli.common import EXIT_FAILED, EXIT_NOT_FOUND, fail
from tether.cli.nodeopts import ConfigOption, DataDirOption, node_settings
from tether.cli.sessions_prune import prune_command
from tether.config import Settings

RECORDINGS_DIR: Final = "recordings"

app = typer.Typer(
    help="Session recordings: list, show, replay, export, prune.",
    no_args_is_help=True,
    add_completion=False,
)

SessionId = Annotated[str, typer.Argument(help="The session's id.", show_default=False)]
RecordingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--recordings",
        show_default=False,
        help="The recordings directory. Default: <data_dir>/recordings.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(config: Path | None, data_dir: Path | None) -> Settings:
    return node_settings(config, data_dir)


def recordings_root(config: Path | None, data_dir: Path | None, recordings: Path | None) -> Path:
    """The recordings directory the options name; exits 2 on a bad config."""
    if recordings is not None:
        return recordings
    return _settings(config, data_dir).data_dir / RECORDINGS_DIR


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _find(root: Path, session_id: str) -> RecordedSession:
    try:
        return find_recording(root, session_id)
    except RecordingError as error:
        fail(str(error), EXIT_NOT_FOUND)


def _row(session: RecordedSession) -> dict[str, Any]:
    summary = session.summary or {}
    return {
        "session_id": session.session_id,
        "started_at": session.started_at.isoformat(),
        "state": session.state,
        "duration": summary.get("duration"),
        "output_bytes": summary.get("output_bytes"),
        "truncated": summary.get("truncated"),
        "exit_status": summary.get("exit_status"),
        **{key: session.meta.get(key) for key in ("protocol", "agent", "user", "target")},
        "path": str(session.cast_path),
    }


@app.command("list")
def list_sessions(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    recordings: RecordingsOpt = None,
    agent: Annotated[
        str | None, typer.Option("--agent", show_default=False, help="Only this agent's.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """List sessions, oldest first: those recorded, and those the audit trail knows of."""
    root = recordings_root(config, data_dir, recordings)
    rows = [_row(s) for s in iter_recordings(root)]
    if recordings is None:
        rows = _with_audited(rows, _settings(config, data_dir))
    rows = [row for row in rows if agent in (None, row["agent"])]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    table = Table("session", "started (UTC)", "protocol", "agent", "target", "duration", "state")
    for row in rows:
        table.add_row(
            *(_cell(row[key]) for key in ("session_id", "started_at", "protocol", "agent")),
            _cell(row["target"]),
            "" if row["duration"] is None else f"{row['duration']:.1f}s",
            _cell(row["state"]),
        )
    _console().print(table)


@app.command("show")
def show(
    session_id: SessionId,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    recordings: RecordingsOpt = None,
    as_json: AsJson = False,
) -> None:
    """Show a session's metadata, summary and file transfers. Exits 5 if there is none."""
    root = recordings_root(config, data_dir, recordings)
    session = _find(root, session_id)
    cast = _read(session.cast_path)
    events = _count(cast)
    try:
        transfers = session.transfers()
        in_session = session_transfers(root, session.session_id)
    except RecordingError as error:
        fail(str(error))
    settings = None if recordings is not None else _settings(config, data_dir)
    info = {
        **_row(session),
        "header": session.header,
        "events": events,
        "readable_to_end": cast.complete,
        "transfers": [_transfer(t) for t in transfers],
        **_integrity(session, settings),
        "transfers_integrity": _transfers_integrity(session, transfers, in_session, settings),
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        console = _console()
        for key in ("session_id", "started_at", "state", "protocol", "agent", "user", "target"):
            console.print(Text(f"{key}: ") + _cell(info[key]))
        for key in ("duration", "output_bytes", "truncated", "exit_status", "events", "path"):
            console.print(Text(f"{key}: ") + _cell(info[key]))
        for key in ("cast_sha256", "integrity", "transfers_integrity"):
            console.print(Text(f"{key}: ") + _cell(info[key]))
        for transfer in info["transfers"]:
            line = "{direction} {path} ({size} bytes, sha256 {sha256})".format(**transfer)
            console.print(Text("transfer: ") + _cell(line))
    if MODIFIED in (info["integrity"], info["transfers_integrity"]):
        raise typer.Exit(EXIT_FAILED)


MODIFIED: Final = "modified"


def _integrity(session: RecordedSession, settings: Settings | None) -> dict[str, Any]:
    """The cast file's SHA-256 and what it is checked against: the digest the audit trail
    holds for it (chained, so tamper-evident) when the trail can be read, else the one in
    its summary file (which whoever changed the cast could change too).

    ``integrity``: ``verified`` (matches the audit trail), ``matches summary``, ``modified``
    (differs from either), or ``unverified`` (nothing to check it against)."""
    try:
        actual = file_sha256(session.cast_path)
    except OSError as error:
        fail(f"cannot read {session.cast_path}: {error.strerror or error}")
    summary = (session.summary or {}).get("cast_sha256")
    audited: list[str] = []
    if settings is not None:
        from tether.audit.sessions_index import AuditIndexError, recording_digests

        try:
            audited = asyncio.run(recording_digests(settings.database, session.session_id))
        except AuditIndexError as error:
            typer.echo(f"tether: warning: audit trail not read: {error}", err=True)
    if any(digest != actual for digest in audited) or summary not in (None, actual):
        integrity = MODIFIED
    elif audited:
        integrity = "verified"
    else:
        integrity = "matches summary" if summary == actual else "unverified"
    return {
        "cast_sha256": actual,
        "audited_sha256": audited[0] if audited else None,
        "integrity": integrity,
    }


def _transfers_integrity(
    session: RecordedSession,
    transfers: list[TransferRecord],
    in_session: list[TransferRecord],
    settings: Settings | None,
) -> str | None:
    """The recording's file transfers checked against the trail's ``file.transfer`` events
    of its session (chained, so tamper-evident): ``verified`` when each one is an audited
    transfer (direction, path, size and SHA-256) and each audited one of the session is in
    one of its recordings, ``modified`` when not (a record added, or one removed: fewer than
    the summary counts, or an audited transfer no recording of the session holds),
    ``unverified`` when the trail cannot be read; None when neither has any."""
    counted = (session.summary or {}).get("transfers")
    if isinstance(counted, int) and counted != len(transfers):
        return MODIFIED
    if settings is None:
        return None if not transfers else "unverified"
    from tether.audit.sessions_index import AuditIndexError, audited_transfers

    try:
        found = asyncio.run(audited_transfers(settings.database, session.session_id))
    except AuditIndexError as error:
        typer.echo(f"tether: warning: audit trail not read: {error}", err=True)
        return "unverified"
    audited = Counter(found)
    recorded = Counter(_key(t) for t in transfers)
    if recorded - audited or audited - Counter(_key(t) for t in in_session):
        return MODIFIED
    return "verified" if transfers else None


def _key(transfer: TransferRecord) -> tuple[str, str, int, str]:
    return str(transfer.direction), transfer.path, transfer.size, transfer.sha256


def _with_audited(rows: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """``rows`` and the sessions of the audit trail that have no recording, by start time."""
    from tether.audit.sessions_index import AuditIndexError, audited_sessions

    try:
        audited = asyncio.run(audited_sessions(settings.database))
    except AuditIndexError as error:
        typer.echo(f"tether: warning: audit trail not read: {error}", err=True)
        return rows
    # The SSH broker records each channel as <session>.<n>: a session is recorded when one
    # of its channels is.
    recorded = {row["session_id"] for row in rows}
    recorded |= {session_of(str(name)) for name in recorded}
    extra = [
        {**session.as_row(), "state": "no recording", "path": None}
        for session in audited
        if session.session_id not in recorded
    ]
    return sorted(rows + extra, key=lambda row: str(row["started_at"]))


def _transfer(record: Any) -> dict[str, Any]:
    fields = ("time", "path", "direction", "size", "sha256")
    return {name: getattr(record, name) for name in fields}


@app.command("replay")
def replay_session(
    session_id: SessionId,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    recordings: RecordingsOpt = None,
    speed: Annotated[
        float, typer.Option("--speed", "-s", min=0.001, help="Playback speed (2: twice as fast).")
    ] = 1.0,
    max_idle: Annotated[
        float | None,
        typer.Option(
            "--max-idle", "-i", min=0.0, show_default=False, help="Cap each pause at SECONDS."
        ),
    ] = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Write the output as recorded, every escape sequence included (titles, "
            "clipboard writes, requests the terminal answers): only for a trusted recording.",
        ),
    ] = False,
) -> None:
    """Replay a session's terminal output on standard output, with its timing; sequences
    that reach beyond drawing the screen are dropped unless --raw."""
    session = _find(recordings_root(config, data_dir, recordings), session_id)
    cast = _read(session.cast_path)
    out = sys.stdout

    def write(data: str) -> None:
        out.write(data)
        out.flush()

    _guarded(lambda: replay(cast, write, time.sleep, speed=speed, max_idle=max_idle, raw=raw))
    if not cast.complete:
        typer.echo("tether: the recording ends early (its writer stopped)", err=True)


@app.command("export")
def export(
    session_id: SessionId,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    recordings: RecordingsOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="cast (asciicast v2) or text (escapes stripped).")
    ] = "cast",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", show_default=False, help="File to write. Default: stdout."),
    ] = None,
) -> None:
    """Export a session as an uncompressed .cast file or as plain text."""
    if fmt not in ("cast", "text"):
        fail(f"--format: expected cast or text, got {fmt!r}")
    session = _find(recordings_root(config, data_dir, recordings), session_id)
    cast = _read(session.cast_path)
    pieces = cast_lines(cast) if fmt == "cast" else plain_text_pieces(cast)
    if output is None:
        _guarded(lambda: _write_all(sys.stdout, pieces))
        sys.stdout.flush()
        return
    try:
        _write_private(output, pieces)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")


def _write_private(path: Path, pieces: Iterable[str]) -> None:
    """Write ``pieces`` to ``path``, a new file created 0600 like the recording it comes from
    (the umask's 0644 would let any local user read what the terminal showed); an existing
    file keeps its mode. Written as read: a recording of any size in constant memory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        _guarded(lambda: _write_all(handle, pieces))


def _write_all(out: TextIO, pieces: Iterable[str]) -> None:
    for piece in pieces:
        out.write(piece)


def _guarded(run: Callable[[], object]) -> None:
    """``run()``; a recording that cannot be read further is a clear error, not a traceback."""
    try:
        run()
    except RecordingError as error:
        fail(str(error))


def _count(cast: CastStream) -> int:
    count = 0

    def each() -> None:
        nonlocal count
        for _event in cast:
            count += 1

    _guarded(each)
    return count


def _read(path: Path) -> CastStream:
    """The cast at ``path``, read as it is used (constant memory whatever its size)."""
    try:
        return stream_cast(path)
    except RecordingError as error:
        fail(str(error))


def _cell(value: object) -> Text:
    return Text("" if value is None else strip_ansi(str(value)))


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


app.command("prune")(prune_command)  # a retention: tether.cli.sessions_prune
