"""What the commands that work on a node's database or data directory directly share: the
``--config`` and ``--data-dir`` options, and the settings they select."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tether.cli.common import fail
from tether.config import CONFIG_ENV, ConfigError, Settings, load_settings


def config_option(help: str) -> Any:
    """The ``--config``/``-c`` option (also ``TETHER_CONFIG``) with ``help``."""
    return typer.Option("--config", "-c", envvar=CONFIG_ENV, show_default=False, help=help)


ConfigOption = Annotated[
    Path | None, config_option("The node's config file (for its database and data directory).")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-d",
        show_default=False,
        help="The node's data directory (master key, SQLite database, recordings). "
        "Default: ./.tether.",
    ),
]


def node_settings(config: Path | None, data_dir: Path | None) -> Settings:
    """The node's settings from ``config`` (and ``TETHER_*``), ``data_dir`` overriding;
    exits 2 with the reason when they do not load."""
    overrides = {"data_dir": None if data_dir is None else str(data_dir)}
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as error:
        fail(str(error))
