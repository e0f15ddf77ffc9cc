"""What the commands that work on a node's database or data directory directly share: the
``--config`` and ``--data-dir`` options, and the settings they select."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tether.cli.common import fail
from tether.config import CONFIG_ENV, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from tether.crypto.revisions import RowRevisions


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


def node_revisions(settings: Settings) -> RowRevisions:
    """The rows the node of ``settings`` admitted (its ``revisions.json``; none when it has
    no file yet); exits 2 with the reason when the file does not parse."""
    from tether.crypto.revisions import RowRevisions
    from tether.identity.revision_copy import FILE_NAME, RevisionCopyError, read_marks

    revisions = RowRevisions()
    try:
        revisions.hold(read_marks(settings.data_dir / FILE_NAME))
    except RevisionCopyError as error:
        fail(f"the row revisions file does not parse: {error}")
    return revisions
