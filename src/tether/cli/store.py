"""``tether store seal``, ``verify``, ``backup``, ``rekey`` and ``vacuum``: the node's
database, worked on directly (``seal``, ``verify`` and ``rekey`` with the node's master
key, ``TETHER_MASTER_KEY`` or ``<data_dir>/master.key``, never created here).

``seal`` seals the rows written before row seals existed: rows without a seal are refused by
every node until this command adopts them, and it lists each row it seals so that the
operator sees exactly what becomes trusted (docs/vault.md, "Tampering with the database").
``verify`` names every row a node would refuse (:mod:`tether.store.integrity`).
``backup`` copies a SQLite database while the node runs (:mod:`tether.store.backup`).
``rekey`` rotates the master key (:mod:`tether.store.rekey`; docs/vault.md, "Rotating the
master key").
``vacuum`` gives a SQLite database's free pages back to the file system, node stopped
(:mod:`tether.store.vacuum`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from tether.cli.common import EXIT_FAILED, fail
from tether.cli.nodeopts import ConfigOption, DataDirOption, node_revisions, node_settings
from tether.config import Settings
from tether.crypto.seal import RowSealer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tether.crypto.masterkey import MasterKey
    from tether.store.nodelock import NodeLock

T = TypeVar("T")

app = typer.Typer(help="The node's database.", no_args_is_help=True, add_completion=False)

NEXT_KEY_FILE = "master.key.new"  # the next master key, until rekey puts it in place


@app.command("seal")
def seal(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the unsealed rows; seal nothing.")
    ] = False,
) -> None:
    """Seal every row that has no seal yet (rows from before the upgrade), listing each."""
    from tether.store.sealing import adopt, shown, unsealed

    settings = node_settings(config, data_dir)
    sealer = None if dry_run else master_sealer(settings)
    rows = on_store(
        settings, lambda engine: unsealed(engine) if sealer is None else adopt(engine, sealer)
    )
    verb = "unsealed" if dry_run else "sealed"
    for table, keys in rows.items():
        for key in keys:
            typer.echo(f"{verb} {table} {shown(key)}")
    count = sum(len(keys) for keys in rows.values())
    typer.echo(f"{count} row(s) {verb}", err=True)


def on_store(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``work`` on the node's database, opened for it and closed after; exits 2 with the
    reason when the database cannot be opened or used, or is a SQLite file that does not
    exist (a mistyped ``--data-dir`` would otherwise make an empty database and report on
    it as if it were the node's)."""
    from tether.store import Store, StoreError
    from tether.store.database import sqlite_file

    path = sqlite_file(settings.database)
    if path is not None and not path.exists():
        fail(f"no database at {path}: check --data-dir or --config")

    async def run() -> T:
        store = await Store.open(settings.database)
        try:
            return await work(store.engine)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as error:
        fail(str(error))


def master_sealer(settings: Settings, *, create: bool = False) -> RowSealer:
    """The row sealer under the node's master key; exits 2 without one, unless ``create``
    (``tether admin-token create`` on a fresh data directory makes it, as a first start
    would)."""
    return RowSealer(_master_key(settings, create=create))


def _master_key(settings: Settings, *, create: bool = False) -> MasterKey:
    from tether.crypto.masterkey import (
        MASTER_KEY_ENV,
        MASTER_KEY_FILE,
        MasterKeyError,
        load_master_key,
    )

    path = settings.data_dir / MASTER_KEY_FILE
    if not create and MASTER_KEY_ENV not in os.environ and not path.exists():
        fail(f"no master key: set {MASTER_KEY_ENV} or check --data-dir ({path} does not exist)")
    try:
        return load_master_key(settings.data_dir)
    except MasterKeyError as error:
        fail(str(error))


@app.command("verify")
def verify_command(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object: rows checked by table, and the findings."),
    ] = False,
) -> None:
    """Check every seal, ciphertext and the revocation ledger; exit 1 if a node refuses any.

    One line per row a node would refuse: unsealed, refused, unreadable, or older than the
    node of this data directory admitted (its revisions.json; docs/vault.md)."""
    from tether.crypto.envelope import EnvelopeCipher
    from tether.store.integrity import check

    settings = node_settings(config, data_dir)
    cipher = EnvelopeCipher(_master_key(settings))
    revisions = node_revisions(settings)
    report = on_store(settings, lambda engine: check(engine, cipher, revisions))
    rows = sum(report.checked.values())
    if as_json:
        document = {"ok": not report.findings, "checked": report.checked,
                    "findings": report.findings}  # fmt: skip
        typer.echo(json.dumps(document, sort_keys=True))
    else:
        for line in report.findings:
            typer.echo(line)
        typer.echo(f"{rows} row(s) checked, {len(report.findings)} finding(s)", err=True)
    if report.findings:
        raise typer.Exit(EXIT_FAILED)


@app.command("backup")
def backup_command(
    file: Annotated[Path, typer.Argument(help="The new file to copy the database to.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Copy the node's SQLite database to a new FILE (mode 0600) while the node runs.

    One consistent snapshot (SQLite's online backup). PostgreSQL: use pg_dump."""
    from tether.store.backup import BackupError, backup_sqlite, sqlite_path

    settings = node_settings(config, data_dir)
    try:
        source = sqlite_path(settings.database)
        pages = backup_sqlite(source, file)
    except BackupError as error:
        fail(str(error))
    typer.echo(f"backed up {source} to {file} ({pages} pages)", err=True)


@app.command("rekey")
def rekey_command(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            "--new-key-file",
            show_default=False,
            help="Where the new master key is (used as it is) or is made (mode 0600). "
            "Default: <data_dir>/master.key.new, renamed over master.key once done; "
            "required when the key comes from TETHER_MASTER_KEY.",
        ),
    ] = None,
) -> None:
    """Rotate the master key: everything under it moved to a new key. Stop the nodes first.

    One transaction; it lists what moved and what was left as it was (docs/vault.md)."""
    from tether.crypto.envelope import EnvelopeCipher
    from tether.crypto.masterkey import (
        MASTER_KEY_ENV,
        MasterKeyError,
        install_master_key,
        next_master_key,
    )
    from tether.store.rekey import RekeyRefused, rekey

    settings = node_settings(config, data_dir)
    old = _master_key(settings)
    from_env = MASTER_KEY_ENV in os.environ
    if from_env and new_key_file is None:
        fail(f"the master key comes from {MASTER_KEY_ENV}: name a file for the new one with "
             "--new-key-file")  # fmt: skip
    path = new_key_file or settings.data_dir / NEXT_KEY_FILE
    _lock = _node_stopped(settings, "tether store rekey")  # held to the end
    try:
        new = next_master_key(path)
    except MasterKeyError as error:
        fail(str(error))
    if new.key_id == old.key_id:
        fail(f"the key in {path} is the current master key")

    try:
        report = on_store(settings, lambda e: rekey(e, EnvelopeCipher(old), EnvelopeCipher(new)))
    except RekeyRefused as refused:
        fail("\n".join([*refused.failures, f"{refused}: nothing was changed"]))
    for table, count in report.moved.items():
        typer.echo(f"moved {table} {count}")
    for table, count in report.already.items():
        typer.echo(f"already {table} {count}")
    for line in report.left:
        typer.echo(f"left {line}")
    if from_env or new_key_file is not None:
        typer.echo(f"the database is under the new master key in {path}: give it to every "
                   f"node ({MASTER_KEY_ENV} or <data_dir>/master.key) before starting them, "
                   "then delete that file", err=True)  # fmt: skip
        return
    try:
        replaced = install_master_key(path, settings.data_dir)
    except MasterKeyError as error:
        fail(f"{error}; the database is under the new master key in {path}: move it there")
    typer.echo(f"the master key in {replaced} is replaced: start the nodes", err=True)


@app.command("vacuum")
def vacuum_command(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Give the space of deleted rows back to the file system (SQLite). Stop the node first.

    After `tether audit prune`, say. One transaction: a failure leaves the database as it
    was. PostgreSQL: its autovacuum reuses the space; VACUUM FULL gives it back."""
    from tether.store.vacuum import VacuumError, sqlite_database, vacuum_sqlite

    settings = node_settings(config, data_dir)
    try:
        path = sqlite_database(settings.database)
    except VacuumError as error:
        fail(str(error))
    if not path.is_file():  # before the lock, which would make its directory
        fail(f"{path}: no such database")
    _lock = _node_stopped(settings, "tether store vacuum")  # held to the end
    try:
        done = vacuum_sqlite(path)
    except VacuumError as error:
        fail(str(error), EXIT_FAILED)
    given = done.before - done.after
    typer.echo(f"vacuumed {done.path}: {_size(done.before)} -> {_size(done.after)} "
               f"({_size(max(given, 0))} given back)", err=True)  # fmt: skip


def _node_stopped(settings: Settings, doing: str) -> NodeLock | None:
    """The node lock of a SQLite database, held until the command exits (no node serves
    meanwhile); exits 2 naming the serving node when it is held."""
    from tether.store.nodelock import NodeLocked, lock_database

    try:
        return lock_database(settings.database, doing)
    except NodeLocked as error:
        fail(f"{error}: stop the node first")


def _size(count: int) -> str:
    """``count`` bytes for a person: ``512 bytes``, ``1.5 MiB``."""
    if count < 1024:
        return f"{count} bytes"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"
