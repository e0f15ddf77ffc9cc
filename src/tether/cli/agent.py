"""``tether agent``: the agent inventory, over the admin API."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.cli.apiclient import DEFAULT_SERVER as _DEFAULT
from tether.cli.apiclient import AdminClient, AsJson, Server, TokenFile, admin_token
from tether.cli.common import fail

app = typer.Typer(
    help="Create, list, show, disable, enable and offboard agents; issue join tokens.",
    no_args_is_help=True,
    add_completion=False,
)

AgentId = Annotated[str, typer.Argument(help="The agent's id.", show_default=False)]
Labels = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        "-l",
        metavar="NAME=VALUE",
        show_default=False,
        help="A label (repeat the option for several).",
    ),
]


def _client(server: str, token_file: Any) -> AdminClient:
    return AdminClient(server, admin_token(token_file))


def parse_labels(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["team=ops", ...]`` as a mapping; exits 2 on a pair without ``=`` or a repeat."""
    labels: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"label {pair!r}: expected NAME=VALUE")
        if name in labels:
            fail(f"label {name!r} is given twice")
        labels[name] = value
    return labels


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


@app.command("create")
def create(
    agent_id: AgentId,
    owner: Annotated[
        str, typer.Option("--owner", "-o", help="The person or team responsible for it.")
    ],
    purpose: Annotated[
        str | None, typer.Option("--purpose", "-p", help="What the agent is for.")
    ] = None,
    label: Labels = None,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Record a new agent (active). Exits 6 if the id exists."""
    body = {"id": agent_id, "owner": owner, "purpose": purpose, "labels": parse_labels(label)}
    agent = _client(server, token_file).call("POST", "/v1/agents", body)
    if as_json:
        _print_json(agent)
        return
    typer.echo(f"agent {agent['id']} created (owner {agent['owner']}, state {agent['state']})")


@app.command("list")
def list_command(
    state: Annotated[
        str | None,
        typer.Option("--state", help="Only agents in this state: active, disabled, offboarded."),
    ] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Only agents of this owner.")] = None,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """List agents in a table."""
    if state is not None and state not in ("active", "disabled", "offboarded"):
        fail(f"--state {state!r}: expected active, disabled or offboarded")
    params = {k: v for k, v in (("state", state), ("owner", owner)) if v is not None}
    agents = _client(server, token_file).call("GET", "/v1/agents", params=params)["agents"]
    if as_json:
        _print_json(agents)
        return
    table = Table("id", "owner", "state", "purpose", "labels", "last seen")
    for agent in agents:
        table.add_row(
            Text(agent["id"]),
            Text(agent["owner"]),
            _state(agent["state"]),
            Text(agent["purpose"] or "-"),
            Text(_labels(agent["labels"])),
            Text(agent["last_seen_at"] or "never"),
        )
    _console().print(table)


@app.command("show")
def show(
    agent_id: AgentId,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Show an agent, its runtimes and the credentials it holds now."""
    agent = _client(server, token_file).call("GET", f"/v1/agents/{_segment(agent_id)}")
    if as_json:
        _print_json(agent)
        return
    console = _console()
    about = Table.grid(padding=(0, 2))
    for name in ("id", "owner", "state", "purpose", "created_at", "last_seen_at"):
        value = agent.get(name)
        about.add_row(Text(name), _state(value) if name == "state" else Text(str(value or "-")))
    about.add_row(Text("labels"), Text(_labels(agent["labels"]) or "-"))
    console.print(about)
    runtimes = Table("runtime", "platform", "attested by", "labels", "last seen", title="runtimes")
    for r in agent["runtimes"]:
        runtimes.add_row(
            *(
                Text(str(x))
                for x in (
                    r["id"],
                    r["platform"],
                    r["attested_by"],
                    _labels(r["labels"]),
                    r["last_seen_at"],
                )
            )
        )
    console.print(runtimes)
    creds = Table("id", "kind", "task", "runtime", "scope", "expires", title="live credentials")
    for c in agent["credentials"]:
        creds.add_row(
            *(
                Text(str(x))
                for x in (
                    c["id"],
                    c["kind"],
                    c["task_id"],
                    c["runtime_id"],
                    " ".join(c["scope"]),
                    c["expires_at"],
                )
            )
        )
    console.print(creds)


def _change(action: str, agent_id: str, server: str, token_file: Any, body: Any = None) -> None:
    agent = _client(server, token_file).call(
        "POST", f"/v1/agents/{_segment(agent_id)}/{action}", body
    )
    typer.echo(f"agent {agent['id']} is {agent['state']}")


@app.command("disable")
def disable(agent_id: AgentId, server: Server = _DEFAULT, token_file: TokenFile = None) -> None:
    """Refuse every credential of the agent until it is enabled again."""
    _change("disable", agent_id, server, token_file)


@app.command("enable")
def enable(agent_id: AgentId, server: Server = _DEFAULT, token_file: TokenFile = None) -> None:
    """Make a disabled agent active again (an offboarded agent cannot be: exits 6)."""
    _change("enable", agent_id, server, token_file)


@app.command("offboard")
def offboard(
    agent_id: AgentId,
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why, kept with the revocation.")
    ] = "offboarded",
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
) -> None:
    """Offboard an agent for good: revoke everything it holds, expire its join tokens."""
    _change("offboard", agent_id, server, token_file, {"reason": reason})


@app.command("join-token")
def join_token(
    agent_id: AgentId,
    ttl: Annotated[
        int | None,
        typer.Option("--ttl", min=1, max=86400, help="Seconds it stays usable. Default: server's."),
    ] = None,
    label: Labels = None,
    server: Server = _DEFAULT,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Issue a one-time join token: printed alone on standard output, shown only once."""
    body = {"ttl": ttl, "runtime_labels": parse_labels(label)}
    answer = _client(server, token_file).call(
        "POST", f"/v1/agents/{_segment(agent_id)}/join-tokens", body
    )
    if as_json:
        _print_json(answer)
        return
    typer.echo(answer["join_token"])
    typer.echo(
        f"join token {answer['id']} for agent {agent_id}, single use, expires "
        f"{answer['expires_at']}",
        err=True,
    )


def _segment(value: str) -> str:
    return quote(value, safe="")


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _state(state: Any) -> Text:
    styles = {"active": "green", "disabled": "yellow", "offboarded": "red"}
    return Text(str(state), style=styles.get(str(state), ""))
