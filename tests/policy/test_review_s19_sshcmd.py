"""Review s19 (SSH commands): deny rules and path spellings behind ``name=`` and options.

A deny rule's command patterns are also tried against the argv with its paths folded
(``docs/policy-language.md``, "Deny rules see through path spellings"). An argument such as
``dd``'s ``if=/../etc/shadow`` was folded as one path, whose first segment ``if=`` the ``..``
then removed: ``etc/shadow``, which no deny rule on ``if=/etc/shadow`` matches, while a broad
allow rule (``dd **``) let it through to a target that reads ``/etc/shadow``.
"""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import policies, request

RULES = policies(
    """
    rules:
      - id: broad
        effect: allow
        ssh: {commands: ["dd **", "cat **", "tar **", "gcc **"]}
      - id: secrets
        effect: deny
        ssh:
          commands:
            - "dd if=/etc/shadow **"
            - "cat /etc/shadow"
            - "tar -f/etc/shadow **"
            - "tar --file=/etc/shadow **"
            - "gcc -I/etc/secret **"
    """
)


def decide(argv: list[str]) -> tuple[str, str | None]:
    d = RULES.decide(request("ssh", {"command": shlex.join(argv)}))
    return d.decision, d.rule


@pytest.mark.parametrize(
    "argv",
    [
        ["dd", "if=/../etc/shadow"],
        ["dd", "if=/etc/../../etc/shadow", "bs=1"],
        ["dd", "if=//etc/shadow"],
        ["tar", "-f/../etc/shadow", "-x"],
        ["tar", "-f/tmp/../etc/./shadow", "-x"],
        ["tar", "--file=/../etc/shadow"],
        ["gcc", "-I/../etc/secret", "x.c"],
        ["cat", "/../etc/shadow"],
    ],
)
def test_a_denied_path_behind_a_name_or_an_option_is_denied(argv: list[str]) -> None:
    assert decide(argv) == ("deny", "secrets"), argv


def test_other_paths_stay_allowed() -> None:
    assert decide(["dd", "if=/etc/passwd"]) == ("allow", "broad")
    assert decide(["tar", "-f/tmp/x.tar", "-x"]) == ("allow", "broad")
    assert decide(["dd", "if=etc/../shadow"]) == ("allow", "broad")  # relative


_SEGMENTS = st.sampled_from(["etc", "tmp", "srv", "a.b"])


@st.composite
def spelled(draw: st.DrawFn) -> str:
    """``/etc/shadow`` spelled with ``.``, ``..`` and empty segments."""
    parts: list[str] = [""]
    for name in ("etc", "shadow"):
        for _ in range(draw(st.integers(0, 2))):
            noise = draw(st.sampled_from([".", "", "..", "detour"]))
            if noise == "detour":
                parts.extend([draw(_SEGMENTS), ".."])
            elif noise == "..":
                parts.append("..") if len(parts) == 1 else parts.extend([name, ".."])
            else:
                parts.append(noise)
        parts.append(name)
    return "/".join(parts)


@settings(max_examples=150, deadline=None)
@given(
    path=spelled(),
    prefix=st.sampled_from(["", "if=", "--file=", "-f"]),
    extra=st.lists(st.sampled_from(["-x", "bs=1", "/tmp/a/../b", "x"]), max_size=2),
)
def test_any_spelling_of_a_denied_path_is_denied(path: str, prefix: str, extra: list[str]) -> None:
    """Folding only ever widens a deny rule: every spelling of a denied path is denied."""
    command = {"": "cat", "if=": "dd", "--file=": "tar", "-f": "tar"}[prefix]
    argv = [command, prefix + path]
    if command != "cat":  # its deny pattern names one argument exactly
        argv += extra
    assert decide(argv) == ("deny", "secrets"), argv
