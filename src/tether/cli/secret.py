"""``tether secret``: the credential vault's secrets, over the admin API.

A value is read from standard input or ``--file``, never from the command line (where
``ps``, shell history and audit logs would keep it). From standard input one trailing
newline is dropped (``echo "$TOKEN" | tether secret set api``); from a file the bytes are
kept exactly (a PEM or OpenSSH key keeps its final newline). An empty value, and a
terminal on standard input with no ``--file``, are refused with a message, before any
call: there is no interactive prompt that could echo a secret.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Final
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.cli.apiclient import DEFAULT_SERVER as _DEFAULT
from tether.cli.apiclient import AdminClient, AsJson, Server, TokenFile, admin_token
from tether.cli.common import fail
from tether.vault.names import MAX_SECRET_BYTES, InvalidName, check_secret_name

app = typer.Typer(
    help="Set, list, rotate and delete the vault's secrets (values never on the command line).",
    no_args_is_help=True,
    add_completion=False,
)

_NO_INPUT: Final = (
    "no value: pipe it on standard input or pass --file "
    "(values are never taken from the command line)"
)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

SecretName = Annotated[
    str, typer.Argument(help="The secret's name, e.g. billing/api-token.", show_default=False)
]
ValueFile = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        metavar="FILE",
        show_default=False,
        help="Read the value from FILE (bytes kept exactly). Default: standard input.",
    ),
]
Description = Annotated[
    str | None, typer.Option("--description", "-d", help="What the secret is (shown in lists).")
]


def read_value(file: Path | None, stdin: BinaryIO | None = None) -> bytes:
    """The value from ``file``, else standard input; exits 2 when there is none."""
    if file is not None:
        value = _read_file(file)
    else:
        if stdin is None:
            if sys.stdin is None or sys.stdin.isatty():
                fail(_NO_INPUT)
            stdin = sys.stdin.buffer
        # One byte past a full value and its line end: more is refused below, never cut.
        value = stdin.read(MAX_SECRET_BYTES + 3)
        value = value[:-2] if value.endswith(b"\r\n") else value.removesuffix(b"\n")
    if not value:
        fail("the value is empty: a secret needs at least one byte")
    if len(value) > MAX_SECRET_BYTES:
        fail(f"the value is larger than {MAX_SECRET_BYTES} bytes")
    return value


def _read_file(file: Path) -> bytes:
    try:
        with file.open("rb") as handle:
            return handle.read(MAX_SECRET_BYTES + 1)
    except OSError as error:
        fail(f"cannot read {file}: {(error.strerror or str(error)).lower()}")


def _printable(text: str) -> str:
    """``text`` with control characters shown as ``?`` (a description stored before they
    were refused must not drive the terminal)."""
    return _CONTROL.sub("?", text)


def _name(name: str) -> str:
    try:
        return check_secret_name(name)
    except InvalidName as error:
        fail(str(error))


def _path(name: str) -> str:
    return "/v1/secrets/" + quote(name, safe="/")


def _put(
    name: str,
    file: Path | None,
    description: str | None,
    mode: str,
    server: str,
    token_file: Path | None,
) -> dict[str, Any]:
    name = _name(name)
    client = AdminClient(server, admin_token(token_file))
    value = read_value(file)
    body = {"value_b64": base64.b64encode(value).decode(), "description": description}
    answer: dict[str, Any] = client.call("PUT", _path(name), {**body, "mode": mode})
    return answer


@app.command("set")
def set_command(
    name: SecretName,
    file: ValueFile = None,
    description: Description = None,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
) -> None:
    """Create a secret, or rotate it if it exists; the value comes from stdin or --file."""
    info = _put(name, file, description, "set", server, token_file)
    state = "created" if info["created"] else f"rotated to version {info['version']}"
    typer.echo(f"secret {info['name']} {state}")


@app.command("rotate")
def rotate(
    name: SecretName,
    file: ValueFile = None,
    description: Description = None,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
) -> None:
    """Give an existing secret a new value (the next version); exits 5 if it does not exist."""
    info = _put(name, file, description, "rotate", server, token_file)
    typer.echo(f"secret {info['name']} rotated to version {info['version']}")


@app.command("list")
def list_command(
    server: Server = _DEFAULT, token_file: TokenFile = None, as_json: AsJson = False
) -> None:
    """List secrets: name, version, last update, description (never a value)."""
    answer = AdminClient(server, admin_token(token_file)).call("GET", "/v1/secrets")
    if as_json:
        typer.echo(json.dumps(answer["secrets"], indent=2, sort_keys=True))
        return
    table = Table("name", "version", "updated", "description")
    for info in answer["secrets"]:
        table.add_row(
            Text(info["name"]),
            Text(str(info["version"])),
            Text(info["updated_at"]),
            Text(_printable(info["description"] or "-")),
        )
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)


@app.command("delete")
def delete(name: SecretName, server: Server = _DEFAULT, token_file: TokenFile = None) -> None:
    """Delete a secret for good; targets that name it fail until it is set again."""
    name = _name(name)
    AdminClient(server, admin_token(token_file)).call("DELETE", _path(name))
    typer.echo(f"secret {name} deleted")
