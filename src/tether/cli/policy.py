"""``tether policy``: evaluate requests, run policy tests, check a policy directory."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, BinaryIO, TextIO

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.cli.common import EXIT_FAILED, EXIT_OK, fail, load_or_exit
from tether.cli.evalinput import read_requests
from tether.jsoninput import JsonInputError, invalid_request
from tether.policy import PolicySet, TestOutcome, lint, run_tests

app = typer.Typer(
    help="Evaluate, test and check policies.", no_args_is_help=True, add_completion=False
)

PoliciesDir = Annotated[
    Path,
    typer.Argument(
        help="Policy directory (its *.yaml and *.yml files, read recursively).", show_default=False
    ),
]


@app.command("eval")
def eval_command(
    policies: Annotated[
        Path,
        typer.Option(
            "--policies", "-p", help="Policy directory to decide with.", show_default=False
        ),
    ],
    request: Annotated[
        Path | None,
        typer.Option(
            "--request",
            "-r",
            help="File holding the request(s); '-' or absent: standard input.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Decide requests: one JSON request, or JSON Lines; prints one decision per line.

    Exits 0 when every request was decided, whatever the decisions; 2 when the policies
    do not load. A line that is not a request is answered deny, invalid-request.
    """
    policy_set, _files = load_or_exit(policies)
    if request is None or str(request) == "-":
        _eval_stream(policy_set, sys.stdin.buffer, sys.stdout, flush=True)
        return
    try:
        stream = request.open("rb")
    except OSError as error:
        fail(f"cannot read {request}: {(error.strerror or str(error)).lower()}")
    with stream:
        _eval_stream(policy_set, stream, sys.stdout, flush=False)


def _eval_stream(policy_set: PolicySet, source: BinaryIO, out: TextIO, *, flush: bool) -> None:
    for item in read_requests(source):
        if isinstance(item, JsonInputError):
            decision = invalid_request(policy_set, str(item))
        else:
            decision = policy_set.decide(item)
        out.write(json.dumps(decision.to_dict(), separators=(",", ":")) + "\n")
        if flush:
            out.flush()


@app.command("test")
def test_command(directory: PoliciesDir) -> None:
    """Run the policy files' tests; exit 1 listing every miss, 2 if the files do not load."""
    policy_set, _files = load_or_exit(directory)
    outcomes = run_tests(policy_set)
    # A pipe or CI log gets 120 columns rather than Rich's 80, a terminal its own width.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    if not outcomes:
        fail(f"no tests in {directory}: add tests: to the policy files", EXIT_FAILED)
    console.print(_outcome_table(outcomes))
    misses = [outcome for outcome in outcomes if not outcome.passed]
    for miss in misses:
        line = f"FAIL {miss.file}:{miss.line}: {miss.name}: {miss.message}"
        console.print(Text(line), soft_wrap=True)  # one line per miss, for grep
    console.print(Text(f"{len(outcomes) - len(misses)} passed, {len(misses)} failed"))
    raise typer.Exit(EXIT_FAILED if misses else EXIT_OK)


def _outcome_table(outcomes: Iterable[TestOutcome]) -> Table:
    table = Table("result", "test")
    for name in ("decision", "reason", "rule"):
        table.add_column(name, no_wrap=True)
    for outcome in outcomes:
        got = outcome.got
        table.add_row(
            Text("pass", style="green") if outcome.passed else Text("FAIL", style="bold red"),
            Text(f"{outcome.file}:{outcome.line} {outcome.name}"),
            Text(got.decision),
            Text(got.reason),
            Text(got.rule or "-"),
        )
    return table


@app.command("check")
def check_command(
    directory: PoliciesDir,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 on warnings too, not only on errors.")
    ] = False,
) -> None:
    """Load and lint a policy directory; exit 2 if it does not load, 1 on an error finding."""
    policy_set, files = load_or_exit(directory)
    findings = lint(policy_set)
    for finding in findings:
        typer.echo(str(finding))
    errors = sum(1 for finding in findings if finding.severity == "error")
    typer.echo(
        f"{len(policy_set.rules)} rules in {files} files, {policy_set.version}: "
        f"{errors} errors, {len(findings) - errors} warnings"
    )
    if errors or (strict and findings):
        raise typer.Exit(EXIT_FAILED)
