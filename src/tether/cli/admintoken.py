"""``tether admin-token create|list|revoke``: admin tokens, directly in the database.

They need no server and no other admin token: ``create`` is the way back in when the first
token, printed once at first start, is lost, and ``revoke`` ends a token that leaked (every
node reads a token's row at each use: refused at its next request). Whoever can run them
can read the node's configuration and database anyway. ``create`` and ``revoke`` need the
node's master key too (``TETHER_MASTER_KEY`` or ``<data_dir>/master.key``, created there on
a fresh data directory as a first start would, for ``create``): the token's row is sealed
with it, and nodes refuse a row sealed otherwise. ``list`` shows no secret: tokens are
stored as the hash of theirs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.cli.common import EXIT_FAILED, fail
from tether.cli.nodeopts import ConfigOption, DataDirOption, node_settings
from tether.cli.store import master_sealer, on_store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tether.store.keys import AdminToken

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


@app.command("list")
def list_command(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] = False,
) -> None:
    """List the admin tokens of the node's database (never their secrets)."""
    from tether.store.credentials import is_revoked
    from tether.store.keys import admin_token_revocation, list_admin_tokens

    async def read(engine: AsyncEngine) -> list[tuple[AdminToken, bool]]:
        async with engine.connect() as conn:
            return [(token, await is_revoked(conn, "token", admin_token_revocation(token.id)))
                    for token in await list_admin_tokens(conn)]  # fmt: skip

    listed = on_store(node_settings(config, data_dir), read)
    now = datetime.now(UTC)
    if as_json:
        shown = [{"id": t.id, "name": t.name, "state": _state(t, listed_revoked, now),
                  "created_at": _time(t.created_at), "expires_at": _time(t.expires_at),
                  "revoked_at": _time(t.revoked_at), "last_used_at": _time(t.last_used_at)}
                 for t, listed_revoked in listed]  # fmt: skip
        typer.echo(json.dumps({"admin_tokens": shown}, indent=2, sort_keys=True))
        return
    table = Table("id", "name", "state", "created", "expires", "last used")
    for token, listed_revoked in listed:
        table.add_row(
            Text(token.id), Text(token.name), Text(_state(token, listed_revoked, now)),
            Text(_time(token.created_at) or "-"), Text(_time(token.expires_at) or "never"),
            Text(_time(token.last_used_at) or "never"),
        )  # fmt: skip
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tat_<id>.…; see list).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an admin token: every node refuses it at its next request."""
    from tether.store.keys import revoke_admin_token

    settings = node_settings(config, data_dir)
    sealer = master_sealer(settings)

    async def run(engine: AsyncEngine) -> bool:
        async with engine.begin() as conn:
            return await revoke_admin_token(
                conn, sealer, token_id, datetime.now(UTC), by="tether admin-token revoke"
            )

    if not on_store(settings, run):
        fail(f"no live admin token {token_id!r} (unknown, or revoked already)", EXIT_FAILED)
    typer.echo(f"admin token {token_id} revoked", err=True)


def _state(token: AdminToken, listed_revoked: bool, now: datetime) -> str:
    """Revoked when its row says so, or the revocation list does (the row put back live:
    every node refuses it all the same)."""
    if token.revoked_at is not None or listed_revoked:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "live"


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")
