"""``tether revoke`` and ``tether keys``: revocations and signing-key rotation, over the API."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.cli.apiclient import DEFAULT_SERVER, AdminClient, Server, TokenFile, admin_token

revoke_app = typer.Typer(
    help="Revoke a token, an agent, a task or a runtime, for good.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Tether's signing keys.", no_args_is_help=True, add_completion=False)

Reason = Annotated[
    str, typer.Option("--reason", "-r", help="Why (kept with the revocation, audited).")
]


def _revoke(kind: str, value: str, reason: str, server: str, token_file: TokenFile) -> None:
    client = AdminClient(server, admin_token(token_file))
    answer = client.call(
        "POST", "/v1/revocations", {"kind": kind, "value": value, "reason": reason}
    )
    state = "revoked" if answer["created"] else "was already revoked"
    typer.echo(f"{kind} {value} {state}")
    if answer.get("family") not in (None, value):
        typer.echo(f"its renewal family {answer['family']} is revoked with it")
    ended = answer.get("ended") or []
    if ended:
        more = " (and more)" if answer.get("ended_more") else ""
        typer.echo(f"ended {len(ended)} live credential(s){more}: " + ", ".join(ended))


@revoke_app.command("token")
def token(
    jti: Annotated[str, typer.Argument(help="The token's id (its jti claim).")],
    reason: Reason,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """Revoke one access token by its id, with its whole renewal family (every renewal
    of the agent's own token, older or newer) and what was derived from them."""
    _revoke("token", jti, reason, server, token_file)


@revoke_app.command("agent")
def agent(
    agent_id: Annotated[str, typer.Argument(help="The agent's id.")],
    reason: Reason,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """Revoke every credential of an agent, now and for good (see also agent offboard)."""
    _revoke("agent", agent_id, reason, server, token_file)


@revoke_app.command("task")
def task(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    reason: Reason,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """Revoke every credential issued for a task."""
    _revoke("task", task_id, reason, server, token_file)


@revoke_app.command("runtime")
def runtime(
    runtime_id: Annotated[str, typer.Argument(help="The runtime's id.")],
    reason: Reason,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """Revoke every credential issued to a runtime."""
    _revoke("runtime", runtime_id, reason, server, token_file)


@keys_app.command("rotate")
def rotate(server: Server = DEFAULT_SERVER, token_file: TokenFile = None) -> None:
    """Make a new access-token signing key; the old one verifies until its tokens expire."""
    answer = AdminClient(server, admin_token(token_file)).call("POST", "/v1/keys/rotate")
    typer.echo(
        f"new signing key {answer['kid']}; the previous key verifies for "
        f"{answer['overlap_seconds']} more seconds"
    )
