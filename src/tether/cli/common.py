"""What every command shares: exit codes, error output, loading a policy directory."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Final, NoReturn

import typer

from tether.policy import PolicySet, load_policies
from tether.policy.errors import PolicyLoadError
from tether.policyfiles import read_policy_dir

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the command ran, and what it checked failed (a test, a lint error)
EXIT_UNUSABLE: Final = 2  # the command could not run: bad config, policies that do not load
EXIT_UNREACHABLE: Final = 3  # the Tether server did not answer
EXIT_UNAUTHORIZED: Final = 4  # the server refused the admin token (401/403)
EXIT_NOT_FOUND: Final = 5  # the server has no such thing (404)
EXIT_CONFLICT: Final = 6  # the server refused the change in the current state (409)
EXIT_INTERNAL: Final = 70  # a bug in Tether (EX_SOFTWARE)


def fail(message: str, code: int = EXIT_UNUSABLE) -> NoReturn:
    """Print ``tether: error: message`` (each line of it) on standard error; exit ``code``."""
    for line in message.splitlines() or [""]:
        typer.echo(f"tether: error: {line}", err=True)
    raise typer.Exit(code)


def load_or_exit(directory: Path) -> tuple[PolicySet, int]:
    """The policy set of ``directory`` and its file count; exits 2 if it does not load."""
    try:
        sources = read_policy_dir(directory)
        return load_policies(sources), len(sources)
    except PolicyLoadError as error:
        fail(f"policies did not load: {error}")


def configure_logging(level: str) -> None:
    """One handler on standard error for Tether, uvicorn and everything else."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request's whole URL at INFO, the default level: a SIEM sink's url
    # with user:password@ or ?token= would be written to the log at each batch.
    # asyncssh logs every exec's whole command at INFO (on the agent's leg and on the
    # target's), and at DEBUG every env request's value: `curl -u user:password` or
    # `--token=...` would be written to the log in clear, where the audit trail redacts them.
    for name in ("httpx", "httpcore", "asyncssh"):
        logging.getLogger(name).setLevel(logging.WARNING)
