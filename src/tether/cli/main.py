"""The ``tether`` command: entry point and top-level commands."""

from __future__ import annotations

import os
import sys

import typer

from tether import __version__
from tether.cli import admintoken, agent, demo, policy, revoke, secret, serve, target
from tether.cli import approvals as approvals_cli
from tether.cli import audit as audit_cli
from tether.cli import sessions as sessions_cli
from tether.cli import store as store_cli
from tether.cli import users as users_cli
from tether.cli.common import EXIT_INTERNAL
from tether.cli.helptext import reflow_commands

app = typer.Typer(
    name="tether",
    help="Tether: a privileged access broker for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(policy.app, name="policy")
app.add_typer(agent.app, name="agent")
app.add_typer(revoke.revoke_app, name="revoke")
app.add_typer(revoke.keys_app, name="keys")
app.add_typer(admintoken.app, name="admin-token")
app.add_typer(sessions_cli.app, name="sessions")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(secret.app, name="secret")
app.add_typer(target.app, name="target")
app.add_typer(store_cli.app, name="store")
app.command("serve")(serve.serve)
app.command("demo-upstream")(demo.demo_upstream)
app.add_typer(approvals_cli.app, name="approvals")
app.add_typer(users_cli.app, name="user")
app.command("login")(users_cli.login)
app.command("logout")(users_cli.logout)


@app.command("version")
def version() -> None:
    """Print Tether's version."""
    typer.echo(f"tether {__version__}")


def main() -> None:
    """Run the command line; an unexpected error is one line on stderr, not a traceback."""
    try:
        reflow_commands(typer.main.get_command(app))()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python from complaining
        # again when it flushes standard output at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as error:
        if os.environ.get("TETHER_DEBUG"):
            raise
        typer.echo(
            f"tether: internal error: {type(error).__name__}: {error} "
            "(set TETHER_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
