"""Every config key and every command option is documented (docs/configuration.md, docs/cli.md).

The conventions the docs follow, so that this test can check them:

* **Configuration.** Every key of :class:`tether.config.Settings` has a table row in
  docs/configuration.md whose first cell names it, dotted and in backticks:
  ```| `ssh.listen` | ...```. A nested model's keys are dotted below it
  (``ssh.recording.record_input``); a list of models adds ``[]`` (``audit.sinks[].name``,
  ``identity.workload_issuers[].agents``), and for a discriminated union (the sink kinds)
  the fields of every variant are documented. The list or section itself has its row too.
  Where a row's `default` cell is a code span (optionally followed by a parenthesis naming
  the sink kinds), it must equal the model's default.
* **Commands.** Every command path (``tether target ssh-ca``) is named, in backticks, by a
  heading of docs/cli.md (```### `tether target ssh-ca` ```; a heading may name several
  commands). Each of the command's long options (``--flag``, and the negative form of a
  ``--x/--no-x`` pair) appears in backticks in that heading's section or in the section of a
  heading above it (options shared by a group of commands are described once, higher up).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from tether.cli.main import app
from tether.config import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
_SPAN = re.compile(r"`([^`\n]+)`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


# --- configuration ---------------------------------------------------------------------------


def _models_in(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The pydantic models an annotation holds, each with whether it is inside a list."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
    elif origin is typing.Annotated:
        yield from _models_in(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)
    elif origin in (list, tuple, set, frozenset):
        for arg in typing.get_args(annotation):
            for model, _ in _models_in(arg):
                yield model, True


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of ``model``, sections and lists included."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        key = prefix + name
        keys.append(key)
        for sub, in_list in _models_in(field.annotation):
            for subkey in config_keys(sub, key + ("[]." if in_list else ".")):
                if subkey not in keys:
                    keys.append(subkey)
    return keys


def documented_config_keys(text: str) -> set[str]:
    """The backticked names in the first cell of every table row."""
    keys: set[str] = set()
    for line in text.splitlines():
        if line.startswith("|"):
            first = line.split("|")[1]
            keys.update(span.strip() for span in _SPAN.findall(first))
    return keys


def test_config_walk_reaches_every_section() -> None:
    keys = config_keys(Settings)
    for expected in (
        "ssh.listen",
        "ssh.recording.record_input",
        "pg_proxy.require_tls",
        "http_proxy.domain",
        "approvals.webhooks[].secret_env",
        "users.oidc.client_id",
        "audit.sinks[].backoff.jitter",
        "audit.sinks[].use_ack",  # a field of one variant (hec) of the union
        "identity.workload_issuers[].agents",
        "identity.user_issuers[].groups_claim",
    ):
        assert expected in keys


def test_every_config_key_is_documented() -> None:
    documented = documented_config_keys((DOCS / "configuration.md").read_text("utf-8"))
    missing = [key for key in config_keys(Settings) if key not in documented]
    assert not missing, f"keys without a row in docs/configuration.md: {missing}"


def test_a_missing_config_row_is_caught() -> None:
    text = (DOCS / "configuration.md").read_text("utf-8")
    kept = "\n".join(line for line in text.splitlines() if "`ssh.listen`" not in line[:40])
    assert "ssh.listen" not in documented_config_keys(kept)


def model_defaults(model: type[BaseModel], prefix: str = "") -> dict[str, list[Any]]:
    """The defaults of every optional key (several for a key of several union variants)."""
    found: dict[str, list[Any]] = {}
    for name, field in model.model_fields.items():
        key = prefix + name
        if not field.is_required():
            found.setdefault(key, []).append(field.get_default(call_default_factory=True))
        for sub, in_list in _models_in(field.annotation):
            for subkey, values in model_defaults(sub, key + ("[]." if in_list else ".")).items():
                found.setdefault(subkey, []).extend(values)
    return found


def documented_defaults(text: str) -> dict[str, str]:
    """``key -> value`` for rows whose `default` cell starts with a code span: the span, when
    nothing but a parenthesis (the sink kinds it applies to) follows it."""
    found: dict[str, str] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        keys = _SPAN.findall(cells[0])
        if "default" not in header or len(cells) != len(header) or len(keys) != 1:
            continue
        cell = cells[header.index("default")]
        match = re.fullmatch(r"`([^`]*)`(\s*\(.*\))?", cell)
        if match:
            found[keys[0]] = match.group(1)
    return found


def _same(documented: str, default: Any) -> bool:
    if isinstance(default, bool):
        return documented == str(default).lower()
    if isinstance(default, int | float):
        return re.fullmatch(r"-?[0-9.]+", documented) is not None and float(documented) == default
    if isinstance(default, Path):
        return Path(documented) == default
    if isinstance(default, list | dict):
        inner = ", ".join(map(str, default))
        return documented == ("[" + inner + "]" if isinstance(default, list) else "{" + inner + "}")
    return documented == (f'"{default}"' if default == "" else str(default))


def wrong_defaults(text: str) -> list[str]:
    defaults = model_defaults(Settings)
    wrong = []
    for key, documented in documented_defaults(text).items():
        values = [v for v in defaults.get(key, []) if v is not None]
        if values and all(v == values[0] for v in values) and not _same(documented, values[0]):
            wrong.append(f"{key}: documented {documented!r}, default {values[0]!r}")
    return wrong


def test_documented_defaults_are_the_defaults() -> None:
    text = (DOCS / "configuration.md").read_text("utf-8")
    assert len(documented_defaults(text)) > 80  # most rows are checked
    assert not wrong_defaults(text)


def test_a_wrong_default_is_caught() -> None:
    text = (DOCS / "configuration.md").read_text("utf-8")
    row = "| `ssh.listen` | `127.0.0.1:2222` |"
    assert row in text
    changed = text.replace(row, "| `ssh.listen` | `127.0.0.1:2223` |")
    assert wrong_defaults(changed) == [
        "ssh.listen: documented '127.0.0.1:2223', default '127.0.0.1:2222'"
    ]


# --- commands --------------------------------------------------------------------------------


def commands() -> list[tuple[str, list[str]]]:
    """Every leaf command's path and its long options (``--help`` aside)."""
    found: list[tuple[str, list[str]]] = []

    def walk(command: Any, path: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is not None:
            for name, sub in sorted(subcommands.items()):
                walk(sub, f"{path} {name}")
            return
        options = [
            opt
            for param in command.params
            if param.param_type_name == "option"
            for opt in [*param.opts, *param.secondary_opts]
            if opt.startswith("--") and opt != "--help"
        ]
        found.append((path, options))

    walk(typer.main.get_command(app), "tether")
    return found


def _sections(text: str) -> list[tuple[int, str, str]]:
    """``(level, heading, body)`` of every heading of a Markdown text (code blocks aside)."""
    sections: list[tuple[int, str, list[str]]] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            sections.append((len(match.group(1)), match.group(2), []))
        elif sections:
            sections[-1][2].append(line)
    return [(level, heading, "\n".join(body)) for level, heading, body in sections]


def _names(heading: str, path: str) -> bool:
    return any(
        span.strip() == path or span.strip().startswith(path + " ")
        for span in _SPAN.findall(heading)
    )


def _has_option(text: str, option: str) -> bool:
    pattern = re.compile(rf"(?<![\w-]){re.escape(option)}(?![\w-])")
    return any(pattern.search(span) for span in _SPAN.findall(text))


def undocumented(text: str) -> list[str]:
    """Commands that no heading names, and options that no backticked span names."""
    sections = _sections(text)
    problems: list[str] = []
    for path, options in commands():
        homes = [i for i, (_, heading, _) in enumerate(sections) if _names(heading, path)]
        if not homes:
            problems.append(f"{path}: no heading")
            continue
        for option in options:
            if not any(_has_option(_scope(sections, i), option) for i in homes):
                problems.append(f"{path} {option}")
    return problems


def _scope(sections: list[tuple[int, str, str]], index: int) -> str:
    """The section at ``index`` (its subsections included) and the text of its ancestors."""
    level, heading, body = sections[index]
    parts = [heading, body]
    for deeper_level, deeper_heading, deeper_body in sections[index + 1 :]:
        if deeper_level <= level:
            break
        parts += [deeper_heading, deeper_body]
    wanted = level
    for up_level, up_heading, up_body in reversed(sections[:index]):
        if up_level < wanted:
            parts += [up_heading, up_body]
            wanted = up_level
    return "\n".join(parts)


def test_command_walk_reaches_every_group() -> None:
    paths = dict(commands())
    assert "--kind" in paths["tether target add"]
    assert "--no-browser" in paths["tether login"]
    for path in ("tether target ssh-ca", "tether approvals approve", "tether user token create"):
        assert path in paths


def test_every_command_and_option_is_documented() -> None:
    problems = undocumented((DOCS / "cli.md").read_text("utf-8"))
    assert not problems, f"undocumented in docs/cli.md: {problems}"


@pytest.mark.parametrize(
    ("needle", "expected"),
    [("`tether target ssh-ca", "tether target ssh-ca: no heading"), ("`--max-lag", None)],
)
def test_a_missing_command_or_option_is_caught(needle: str, expected: str | None) -> None:
    text = (DOCS / "cli.md").read_text("utf-8")
    assert needle in text
    kept = "\n".join(line for line in text.splitlines() if needle not in line)
    problems = undocumented(kept)
    if expected is None:
        assert "tether audit sinks --max-lag" in problems
    else:
        assert expected in problems


@pytest.mark.parametrize("name", ["cli.md", "configuration.md"])
def test_code_spans_close_on_their_line(name: str) -> None:
    """A span broken across lines would shift every later pair of backticks."""
    fenced = False
    for number, line in enumerate((DOCS / name).read_text("utf-8").splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            assert line.count("`") % 2 == 0, f"docs/{name}:{number}: unclosed code span"
