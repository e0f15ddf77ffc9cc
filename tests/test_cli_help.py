"""Every command's help reads as prose: the docstring's paragraphs reflowed
(tether.cli.helptext), so the help screen wraps them once, at the terminal's width."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import typer
from hypothesis import given
from hypothesis import strategies as st

from tether.cli.helptext import reflow, reflow_commands
from tether.cli.main import app


def _commands(command: Any, path: str = "tether") -> list[tuple[str, Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, f"{path} {name}")
    return found


def test_reflow_joins_the_lines_of_each_paragraph() -> None:
    text = """First line
        goes on.

        Second paragraph,
        two lines.
        """
    assert reflow(text) == "First line goes on.\n\nSecond paragraph, two lines."
    assert reflow("One.") == "One."


@given(st.text(alphabet=st.sampled_from("ab \n\t."), max_size=60))
def test_reflow_of_any_text_is_paragraphs_of_one_line(text: str) -> None:
    out = reflow(text)
    assert all("\n" not in p for p in out.split("\n\n"))
    assert reflow(out) == out
    assert out.split() == text.split()  # only line breaks and indentation change


def test_every_command_has_help_in_paragraphs_of_one_line() -> None:
    commands = _commands(reflow_commands(typer.main.get_command(app)))
    assert len(commands) > 50
    for path, command in commands:
        assert command.help, f"{path} has no help"
        for paragraph in command.help.split("\n\n"):
            assert "\n" not in paragraph, path
            assert "``" not in paragraph, f"{path}: reST markup in its help"


def test_the_installed_command_wraps_once(tether_bin: Path, clean_env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(tether_bin), "audit", "prune", "--help"],
        capture_output=True, text=True, env={**clean_env, "COLUMNS": "200"}, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the point is a signed checkpoint before the trail's last event" in done.stdout
