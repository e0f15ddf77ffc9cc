"""``tether serve``: run a Tether node."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvloop

from tether.cli.common import configure_logging, fail
from tether.cli.nodeopts import config_option
from tether.config import ConfigError, load_settings

# The server's modules (FastAPI, SQLAlchemy, uvicorn) are imported when ``serve`` runs, not
# when any ``tether`` command starts: they would add seconds to ``tether policy eval``.


def serve(
    config: Annotated[
        Path | None,
        config_option(
            "Config file (.toml, .yaml or .yml). Default: none, built-in "
            "defaults and TETHER_* variables only."
        ),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            "-l",
            metavar="HOST:PORT",
            show_default=False,
            help="Address of the HTTP API (port 0: any free port). Default: 127.0.0.1:8765.",
        ),
    ] = None,
    policies: Annotated[
        Path | None,
        typer.Option(
            "--policies", "-p", show_default=False, help="Policy directory. Default: ./policies."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            show_default=False,
            help="Directory for Tether's state (the SQLite database). Default: ./.tether.",
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            show_default=False,
            help="debug, info, warning, error or critical. Default: info.",
        ),
    ] = None,
) -> None:
    """Run a Tether node: the HTTP API, deciding with the policy directory (reloaded on change).

    Settings: built-in defaults < config file < TETHER_* variables < these options.
    Exits 2 when the configuration, the database or the policies are unusable.
    """
    from tether.node import StartupError, bind, run_node, tune_interpreter

    overrides = {
        "listen": listen,
        "policies": policies,
        "data_dir": data_dir,
        "log_level": log_level,
    }
    try:
        settings = load_settings(config, overrides={k: _plain(v) for k, v in overrides.items()})
    except ConfigError as error:
        fail(str(error))
    configure_logging(settings.log_level)
    try:
        sock = bind(settings)
        tune_interpreter()
        with sock:
            uvloop.run(run_node(settings, sock))  # the node's loop (docs/configuration.md)
    except StartupError as error:
        fail(str(error))


def _plain(value: Path | str | None) -> str | None:
    return None if value is None else str(value)
