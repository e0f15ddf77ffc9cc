"""``tether store seal``: seal the rows written before row seals existed (migrations 0015
and 0016).

It works on the database directly, with the node's master key (``TETHER_MASTER_KEY`` or
``<data_dir>/master.key``, never created here): rows without a seal are refused by every
node until this command adopts them, and it lists each row it seals so that the operator
sees exactly what becomes trusted (docs/vault.md, "Tampering with the database").
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from tether.cli.common import fail
from tether.config import CONFIG_ENV, ConfigError, Settings, load_settings
from tether.crypto.seal import RowSealer

app = typer.Typer(help="The node's database.", no_args_is_help=True, add_completion=False)


@app.command("seal")
def seal(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar=CONFIG_ENV,
            show_default=False,
            help="The node's config file (for its database).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            show_default=False,
            help="The node's data directory (master key, SQLite database). Default: ./.tether.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the unsealed rows; seal nothing.")
    ] = False,
) -> None:
    """Seal every row that has no seal yet (rows from before the upgrade), listing each."""
    from tether.store import Store, StoreError
    from tether.store.sealing import adopt, shown, unsealed

    overrides = {"data_dir": None if data_dir is None else str(data_dir)}
    try:
        settings = load_settings(config, overrides=overrides)
    except ConfigError as error:
        fail(str(error))
    sealer = None if dry_run else master_sealer(settings)

    async def run() -> dict[str, list[str]]:
        store = await Store.open(settings.database)
        try:
            return await (unsealed(store.engine) if sealer is None else adopt(store.engine, sealer))
        finally:
            await store.close()

    try:
        rows = asyncio.run(run())
    except StoreError as error:
        fail(str(error))
    verb = "unsealed" if dry_run else "sealed"
    for table, keys in rows.items():
        for key in keys:
            typer.echo(f"{verb} {table} {shown(key)}")
    count = sum(len(keys) for keys in rows.values())
    typer.echo(f"{count} row(s) {verb}", err=True)


def master_sealer(settings: Settings, *, create: bool = False) -> RowSealer:
    """The row sealer under the node's master key; exits 2 without one, unless ``create``
    (``tether admin-token create`` on a fresh data directory makes it, as a first start
    would)."""
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
        return RowSealer(load_master_key(settings.data_dir))
    except MasterKeyError as error:
        fail(str(error))
