"""``tether user``, ``tether user token``, ``tether login`` and ``tether logout``.

Passwords are prompted for (hidden, twice when set) or read as one line from standard input
with ``--password-stdin``; they never appear on a command line.
"""

from __future__ import annotations

import json
import sys
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tether.cli.apiclient import DEFAULT_SERVER, AsJson, Server, TokenFile
from tether.cli.common import fail
from tether.cli.humans import HumanClient, human_token, login_path, save_login, stored_login

app = typer.Typer(
    help="Users (humans): add, list, set passwords, disable; personal API tokens.",
    no_args_is_help=True,
    add_completion=False,
)
token_app = typer.Typer(
    help="Personal API tokens of the signed-in user.", no_args_is_help=True, add_completion=False
)
app.add_typer(token_app, name="token")

UserId = Annotated[str, typer.Argument(help="The user's id (lowercase).")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]
Ttl = Annotated[
    int | None,
    typer.Option("--ttl", min=1, max=365 * 86400, help="Lifetime in seconds (default 30 days)."),
]


def _client(server: str, token_file: TokenFile) -> HumanClient:
    return HumanClient(server, human_token(server, token_file))


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def _password(from_stdin: bool, *, confirm: bool) -> str:
    if from_stdin:
        text = sys.stdin.readline().rstrip("\n")
    else:
        text = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    if not text:
        fail("the password is empty")
    return str(text)


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


@app.command("add")
def add(
    user_id: UserId,
    role: Annotated[
        list[str] | None, typer.Option("--role", help="admin, approver or auditor (repeatable).")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="A group (repeatable).")
    ] = None,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="No password: the user cannot log in yet.")
    ] = False,
    password_stdin: PasswordStdin = False,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Add a local user (admin). Exits 6 if the id exists."""
    body: dict[str, Any] = {"id": user_id, "roles": role or [], "groups": group or []}
    if not no_password:
        body["password"] = _password(password_stdin, confirm=True)
    user = _client(server, token_file).call("POST", "/v1/users", body)
    if as_json:
        _print_json(user)
        return
    typer.echo(f"user {user['id']} added (roles: {', '.join(user['roles']) or '-'}; "
               f"groups: {', '.join(user['groups']) or '-'})")  # fmt: skip


@app.command("list")
def list_users(
    server: Server = DEFAULT_SERVER, token_file: TokenFile = None, as_json: AsJson = False
) -> None:
    """Every user (admin)."""
    found = _client(server, token_file).call("GET", "/v1/users")
    if as_json:
        _print_json(found)
        return
    table = Table("id", "state", "source", "roles", "groups", "totp", box=None)
    for u in found["users"]:
        table.add_row(u["id"], u["state"], u["source"], ",".join(u["roles"]),
                      ",".join(u["groups"]), "yes" if u["totp"] else "no")  # fmt: skip
    _console().print(table)


@app.command("passwd")
def passwd(
    user_id: UserId,
    password_stdin: PasswordStdin = False,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """Set a user's password (admin); revokes their personal tokens (yours but the one in
    use, when you set your own)."""
    body = {"password": _password(password_stdin, confirm=True)}
    answer = _client(server, token_file).call("POST", f"/v1/users/{user_id}/password", body)
    typer.echo(f"password of {user_id} set; "
               f"{answer.get('tokens_revoked', 0)} personal token(s) revoked")  # fmt: skip


@app.command("disable")
def disable(user_id: UserId, server: Server = DEFAULT_SERVER, token_file: TokenFile = None) -> None:
    """Disable a user (admin): sign-in refused, every personal token revoked."""
    _client(server, token_file).call("POST", f"/v1/users/{user_id}/disable")
    typer.echo(f"user {user_id} disabled; its personal tokens are revoked")


@app.command("enable")
def enable(user_id: UserId, server: Server = DEFAULT_SERVER, token_file: TokenFile = None) -> None:
    """Enable a disabled user again (admin)."""
    _client(server, token_file).call("POST", f"/v1/users/{user_id}/enable")
    typer.echo(f"user {user_id} enabled")


@app.command("totp")
def enroll_totp(
    user_id: UserId, server: Server = DEFAULT_SERVER, token_file: TokenFile = None
) -> None:
    """Enrol a user in TOTP (admin); prints the secret and its otpauth:// URI once."""
    answer = _client(server, token_file).call("POST", f"/v1/users/{user_id}/totp")
    typer.echo(f"secret {answer['secret']}\nuri    {answer['uri']}")


# --- personal tokens --------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", "-n", help="What the token is for.")] = "cli",
    ttl: Ttl = None,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """A new personal token for yourself; printed once."""
    body: dict[str, Any] = {"name": name}
    if ttl is not None:
        body["ttl"] = ttl
    answer = _client(server, token_file).call("POST", "/v1/tokens", body)
    typer.echo(answer["token"])
    typer.echo(f"token {answer['id']} expires at {answer['expires_at']}", err=True)


@token_app.command("list")
def token_list(
    all_users: Annotated[bool, typer.Option("--all", help="Every user's (admin).")] = False,
    user: Annotated[str | None, typer.Option("--user", help="This user's (admin).")] = None,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Your personal tokens (never their secrets)."""
    params: dict[str, Any] = {"all": str(all_users).lower()}
    if user is not None:
        params["user"] = user
    found = _client(server, token_file).call("GET", "/v1/tokens", params=params)
    if as_json:
        _print_json(found)
        return
    table = Table("id", "user", "name", "expires", "revoked", "last used", box=None)
    for t in found["tokens"]:
        table.add_row(t["id"], t["user"], t["name"], t["expires_at"],
                      "yes" if t["revoked"] else "no", t["last_used_at"] or "-")  # fmt: skip
    _console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from token list).")],
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """Revoke one of your tokens (admins: anyone's)."""
    _client(server, token_file).call("DELETE", f"/v1/tokens/{token_id}")
    typer.echo(f"token {token_id} revoked")


# --- login ----------------------------------------------------------------------------------


def login(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Your user id.")] = None,
    oidc: Annotated[
        bool, typer.Option("--oidc", help="Sign in through the configured OIDC provider.")
    ] = False,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="With --oidc: print the URL, open nothing.")
    ] = False,
    totp: Annotated[
        str | None, typer.Option("--totp", help="The current code, if you enrolled TOTP.")
    ] = None,
    ttl: Ttl = None,
    password_stdin: PasswordStdin = False,
    server: Server = DEFAULT_SERVER,
) -> None:
    """Sign in (password, or --oidc); stores a personal token for this server."""
    if oidc:
        answer = _oidc_login(server, open_browser=not no_browser)
        user = answer["user_info"]["id"]
    else:
        if user is None:
            fail("give --user NAME (or --oidc)")
        body: dict[str, Any] = {"user": user, "password": _password(password_stdin, confirm=False)}
        body["token_name"] = "tether login"  # noqa: S105 - the token's label
        if totp is not None:
            body["totp"] = totp
        if ttl is not None:
            body["ttl"] = ttl
        answer = HumanClient(server, None).call("POST", "/v1/login", body)
    path = save_login(server, answer["token"], str(user), answer["id"])
    typer.echo(f"signed in to {server.rstrip('/')} as {user} until {answer['expires_at']} ({path})")


def _oidc_login(server: str, *, open_browser: bool) -> dict[str, Any]:
    started = HumanClient(server, None).call("POST", "/v1/login/oidc")
    url = started["authorization_url"]
    typer.echo(f"Open this URL to sign in:\n\n    {url}\n", err=True)
    typer.echo(f"Then confirm on Tether's page that it shows the code {started['user_code']}.",
               err=True)  # fmt: skip
    if open_browser:
        webbrowser.open(url)
    deadline = time.monotonic() + started["expires_in"]
    path = f"/v1/login/oidc/poll/{started['poll_id']}"
    while True:
        if time.monotonic() >= deadline:
            fail("the sign-in was not completed in time")
        answer = HumanClient(server, None).call("GET", path, params={"wait": 30}, timeout=60)
        if "token" in answer:
            return dict(answer)


def logout(server: Server = DEFAULT_SERVER) -> None:
    """Revoke the stored personal token and forget it."""
    stored = stored_login()
    path: Path = login_path()
    if stored is None:
        fail("not signed in")
    if stored["server"] == server.rstrip("/") and "id" in stored:
        HumanClient(server, stored["token"]).call("DELETE", f"/v1/tokens/{stored['id']}")
    path.unlink(missing_ok=True)
    typer.echo("signed out")
