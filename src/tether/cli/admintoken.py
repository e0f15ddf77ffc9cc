"""``tether admin-token create``: a new admin token, made directly in the database.

It needs no server and no other admin token: it is the way back in when the first token,
printed once at first start, is lost. Whoever can run it can read the node's configuration
and database anyway. It needs the node's master key too (``TETHER_MASTER_KEY`` or
``<data_dir>/master.key``, created there on a fresh data directory as a first start
would): the token's row is sealed with it, and nodes refuse a row sealed otherwise.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import typer

from tether.cli.common import fail
from tether.cli.nodeopts import ConfigOption, DataDirOption, node_settings
from tether.cli.store import master_sealer

app = typer.Typer(help="Admin API tokens.", no_args_is_help=True, add_completion=False)


@app.command("create")
def create(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    name: Annotated[str, typer.Option("--name", "-n", help="A name to tell tokens apart.")] = "cli",
    ttl: Annotated[
        int | None,
        typer.Option(
            "--ttl", min=1, show_default=False, help="Seconds until it expires. Default: never."
        ),
    ] = None,
) -> None:
    """Create an admin token in the node's database; prints it once, on standard output."""
    from tether.identity.admintokens import create_admin_token
    from tether.store import Store, StoreError

    settings = node_settings(config, data_dir)
    sealer = master_sealer(settings, create=True)

    async def run() -> str:
        store = await Store.open(settings.database)
        try:
            text, _ = await create_admin_token(
                store.engine, sealer, name=name, now=datetime.now(UTC), ttl=ttl
            )
        finally:
            await store.close()
        return text

    try:
        token = asyncio.run(run())
    except StoreError as error:
        fail(str(error))
    typer.echo(token)
    typer.echo("admin token created; it is shown only this once", err=True)
