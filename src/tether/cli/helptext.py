"""Help texts reflowed: each paragraph of a command's docstring becomes one line, which the
help screen then wraps to the terminal.

Typer joins the lines of the first paragraph only; the later ones kept the docstring's
line breaks and were wrapped again at the terminal's width, leaving ragged lines
(``... a signed`` / ``checkpoint before ...``). No Tether docstring relies on its line
breaks (no lists, no indented examples in command help), so every paragraph is joined.
"""

from __future__ import annotations

import inspect
from typing import Any


def reflow(text: str) -> str:
    """``text`` (a docstring) with the lines of each paragraph joined by a space."""
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        joined = " ".join(line.strip() for line in paragraph.splitlines() if line.strip())
        if joined:
            paragraphs.append(joined)
    return "\n\n".join(paragraphs)


def reflow_commands(command: Any) -> Any:
    """``command`` (a Click command or group, as ``typer.main.get_command`` builds it) with
    its help and every subcommand's reflowed; returned for chaining."""
    if command.help:
        command.help = reflow(command.help)
    for sub in getattr(command, "commands", {}).values():
        reflow_commands(sub)
    return command
