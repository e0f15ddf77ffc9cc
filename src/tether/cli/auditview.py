"""How ``tether audit`` shows events and verification reports: Rich, or JSON Lines.

JSON output is one object per line (:func:`tether.audit.canonical.event_json`: every
field, ``time`` in RFC 3339), so it pipes into ``jq`` or a file a SIEM can import. The
table summarises each event's action in one cell; ``--json`` has everything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

CELL: Final = 80


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, width=None if stream.isatty() else 200)


def print_json_lines(events: Iterable[Mapping[str, Any]]) -> None:
    for event in events:
        sys.stdout.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def events_table(events: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False, expand=False)
    for name in ("seq", "time", "kind", "agent", "target", "action", "decision", "rule"):
        table.add_column(name, overflow="fold", no_wrap=name in ("seq", "time", "kind"))
    for event in events:
        table.add_row(
            str(event["seq"]),
            str(event["time"]).replace("T", " ").removesuffix("Z")[:23],
            str(event["kind"]),
            _who(event),
            str(event.get("target") or ""),
            Text(summary(event)),
            _decision(event.get("decision")),
            str(event.get("rule") or ""),
        )
    return table


def _who(event: Mapping[str, Any]) -> str:
    who = str(event.get("agent") or event.get("user") or "")
    if event.get("agent") and event.get("user"):
        who += f" (for {event['user']})"
    return who


def _decision(value: Any) -> Text:
    style = {"allow": "green", "deny": "red", "approval_required": "yellow"}.get(str(value), "")
    return Text(str(value or ""), style=style)


def summary(event: Mapping[str, Any]) -> str:
    """One line saying what the event's action was."""
    action = event.get("action") or {}
    kind = event.get("kind")
    if kind == "http.exchange":
        text = f"{action.get('method')} {action.get('path')} → {action.get('status')}"
    elif kind == "ssh.command":
        text = str(action.get("command"))
        if action.get("exit_status") is not None:
            text += f" (exit {action['exit_status']})"
    elif kind == "sql.statement":
        text = _sql_summary(action)
    elif kind == "file.transfer":
        text = f"{action.get('op')} {action.get('path')}"
    elif kind == "mcp.call":
        text = str(action.get("tool") or action.get("resource"))
    elif kind == "admin.change":
        text = f"{action.get('name')}: {action.get('outcome')}"
    else:
        text = json.dumps(action, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= CELL else text[: CELL - 1] + "…"


def _sql_summary(action: Mapping[str, Any]) -> str:
    """A statement's text; a ``completed`` batch (no text) as its count, rows and errors,
    and a statement that did not parse (its text is never recorded) as its size: both
    read ``None`` before."""
    if action.get("phase") == "completed":
        results = action.get("results") or []
        rows = sum(r.get("rows") or 0 for r in results if isinstance(r, Mapping))
        errors = sum(1 for r in results if isinstance(r, Mapping) and r.get("error"))
        text = f"completed: {len(results)} statement(s), {rows} row(s)"
        return text + (f", {errors} error(s)" if errors else "")
    if action.get("query") is None:
        return f"(unparsed, {action.get('size')} bytes)"
    return str(action["query"])


def print_report(report: Mapping[str, Any]) -> None:
    """A verification report: a verdict line, the facts, then each finding by seq."""
    out = console()
    _verdict(out, report, "audit trail verified", "audit trail TAMPERED")
    if report.get("pruned_through") is not None:
        out.print(
            f"  pruned through event {report['pruned_through']} ({report['prunes']} signed "
            "prune marker(s)): the chain starts after it"
        )
    if report.get("awaiting_deletion"):
        out.print(
            f"  {report['awaiting_deletion']} pruned events still await deletion (a prune "
            "stopped midway: run it again)"
        )
    if report["unanchored"]:
        after = report["last_checkpoint_seq"]
        where = f"after checkpoint {after}" if after is not None else "and no checkpoint yet"
        out.print(
            f"  {report['unanchored']} events {where} are unanchored: no signature covers "
            "them yet, so their truncation could not be detected"
        )
    if report["findings"]:
        table = Table(show_edge=False, pad_edge=False)
        for name in ("seq", "problem", "what"):
            table.add_column(name, overflow="fold")
        for finding in report["findings"]:
            table.add_row(str(finding["seq"]), finding["problem"], finding["what"])
        out.print(table)
    if report["more_findings"]:
        out.print(f"  … and {report['more_findings']} more findings not listed")


def print_archive_report(report: Mapping[str, Any]) -> None:
    """An archive's verification report: a verdict line, the facts, then each finding."""
    out = console()
    _verdict(out, report, "audit archive verified", "audit archive REFUSED")
    out.print(f"  sha256 {report['sha256']}")
    if report["marker"] is not None:
        out.print(f"  named by prune marker {report['marker']} of this trail")
    for finding in report["findings"]:
        out.print(f"  {finding}", markup=False, highlight=False)
    if report["more_findings"]:
        out.print(f"  … and {report['more_findings']} more findings not listed")


def _verdict(out: Console, report: Mapping[str, Any], good: str, bad: str) -> None:
    """The verdict line of a verification report, its events, checkpoints and keys."""
    if report["ok"]:
        out.print(Text(good, style="bold green"))
    else:
        count = len(report["findings"]) + report["more_findings"]
        out.print(Text(f"{bad}: {count} finding(s)", style="bold red"))
    span = "no events"
    if report["events"]:
        span = f"{report['events']} events (seq {report['first_seq']} to {report['last_seq']})"
    keys = ", ".join(report["keys"]) or "none"
    out.print(f"  {span}; {report['checkpoints']} signed checkpoints (keys: {keys})")
    if not report.get("keys_authenticated", True):
        out.print(
            "  the signing keys were not checked against the master key (not available "
            "here): a key added to the database would be trusted"
        )
