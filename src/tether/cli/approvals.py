"""``tether approvals``: list, show, approve and deny access requests, as the signed-in human.

What these commands print comes partly from agents (the action, the reason, the task id): it
is shown as literal text (:func:`shown`). Control characters (terminal escape sequences, C1
controls), invisible formatting characters (bidirectional overrides, zero-width characters)
and line separators are printed as ``\\uXXXX`` escapes, and table cells are never read as
Rich markup, so an agent cannot make an approver's terminal show another action than the one
they approve. ``--json`` prints JSON, which escapes them too.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.cli.apiclient import DEFAULT_SERVER, AsJson, Server, TokenFile
from tether.cli.humans import HumanClient, human_token

app = typer.Typer(
    help="Access requests waiting for a human: list, show, approve, deny.",
    no_args_is_help=True,
    add_completion=False,
)

RequestId = Annotated[str, typer.Argument(help="The access request's id (ar_...).")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (kept with the vote, audited).")]
STATUSES = ("pending", "approved", "denied", "cancelled", "expired", "all")


def _client(server: str, token_file: TokenFile) -> HumanClient:
    return HumanClient(server, human_token(server, token_file))


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def shown(value: object) -> str:
    """``value`` as literal text for a terminal: every character that is not visible text
    (controls, formatting, separators, unassigned) as a ``\\uXXXX`` escape."""
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in _HIDDEN else c for c in str(value)
    )


def _action(request: dict[str, Any]) -> str:
    return shown(json.dumps(request["action"], sort_keys=True, ensure_ascii=False))


@app.command("list")
def list_requests(
    status: Annotated[
        str, typer.Option("--status", help=f"One of {', '.join(STATUSES)}.")
    ] = "pending",
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's.")] = None,
    actionable: Annotated[
        bool, typer.Option("--actionable", help="Only those you may still vote on.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Access requests, newest first (pending ones by default)."""
    if status not in STATUSES:
        typer.echo(f"tether: error: --status must be one of {', '.join(STATUSES)}", err=True)
        raise typer.Exit(2)
    params: dict[str, Any] = {"limit": limit, "actionable": str(actionable).lower()}
    if status != "all":
        params["status"] = status
    if agent is not None:
        params["agent"] = agent
    found = _client(server, token_file).call("GET", "/v1/access-requests", params=params)
    if as_json:
        _print_json(found)
        return
    table = Table("id", "status", "agent", "task", "target", "action", "rule", "votes", box=None)
    for r in found["access_requests"]:
        votes = f"{r['approvals']}/{r['required_approvals']}"
        cells = (r["id"], r["status"], r["agent_id"], r["task_id"], r["target"])
        table.add_row(*(Text(shown(c)) for c in cells), Text(_action(r)), Text(shown(r["rule"])),
                      Text(votes))  # fmt: skip
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


@app.command("show")
def show(
    request_id: RequestId,
    wait: Annotated[
        float, typer.Option("--wait", min=0, max=60, help="Wait up to N seconds for a decision.")
    ] = 0.0,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """One access request: the exact action, the rule, the votes, the grant."""
    found = _client(server, token_file).call(
        "GET", f"/v1/access-requests/{request_id}", params={"wait": wait}, timeout=wait + 30
    )
    if as_json:
        _print_json(found)
        return
    lines = [
        f"{found['id']}  {found['status']}",
        f"  agent     {found['agent_id']} (owner {found['owner']}, task {found['task_id']})",
        f"  on behalf {found['delegation_user'] or '-'}",
        f"  target    {found['target']} ({found['kind']})",
        f"  action    {_action(found)}",
        f"  rule      {found['rule']} (scope {found['scope']}, "
        f"{found['approvals']}/{found['required_approvals']} approvals, "
        f"approvers {', '.join(found['approvers'])})",
        f"  reason    {found['reason'] or '-'}",
        f"  asked at  {found['requested_at']}",
    ]
    lines.extend(
        f"  {v['vote']:9} {v['user']} at {v['at']}: {v['reason'] or '-'}" for v in found["votes"]
    )
    if found["grant"] is not None:
        state = "revoked" if found["grant"]["revoked"] else "valid"
        lines.append(f"  grant     {state} until {found['grant']['expires_at']}")
    typer.echo("\n".join(shown(line) for line in lines))


def _vote(verb: str, request_id: str, reason: str, server: str, token_file: TokenFile) -> None:
    found = _client(server, token_file).call(
        "POST", f"/v1/access-requests/{request_id}/{verb}", {"reason": reason}
    )
    done = f"{found['approvals']}/{found['required_approvals']} approvals"
    typer.echo(shown(f"{found['id']} is {found['status']} ({done})"))


@app.command("approve")
def approve(
    request_id: RequestId,
    reason: Reason,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """Approve as yourself. Exits 4 if you may not, 6 if already decided or voted."""
    _vote("approve", request_id, reason, server, token_file)


@app.command("deny")
def deny(
    request_id: RequestId,
    reason: Reason,
    server: Server = DEFAULT_SERVER,
    token_file: TokenFile = None,
) -> None:
    """Deny as yourself (one denial decides)."""
    _vote("deny", request_id, reason, server, token_file)
