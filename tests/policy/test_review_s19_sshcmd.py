"""Review s19 (SSH commands): deny rules and path spellings behind ``name=`` and options.

A deny rule's command patterns are also tried against the argv with its paths folded
(``docs/policy-language.md``, "Deny rules see through path spellings"). An argument such as
``dd``'s ``if=/../etc/shadow`` was folded as one path, whose first segment ``if=`` the ``..``
then removed: ``etc/shadow``, which no deny rule on ``if=/etc/shadow`` matches, while a broad
allow rule (``dd **``) let it through to a target that reads ``/etc/shadow``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.policy.errors import ShellConstruct
from tether.policy.lint import lint
from tether.policy.shell import parse_command
from tether.policy.shell_words import _decode_word

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


# --- builtins that evaluate a quoted word as code (bash) ---------------------------------------

# Both shells are real parts of the test: .ci/run installs zsh (Debian's package).
SHELLS = [shutil.which(name) or name for name in ("bash", "zsh")]


@pytest.mark.parametrize(
    "command",
    [
        "printf -v 'a[$(id)]' x",
        "printf -v'a[$(id)]' x",
        "printf -v 'a[`id`]' x",
        "test -v 'a[$(id)]'",
        "test ! -v 'a[$(id)]'",
        "'[' -v 'a[$(id)]' ']'",
        "read 'a[$(id)]'",
        "read -r x 'a[$(id)]'",
        "read -ra 'a[$(id)]'",
        "wait -n -p 'a[$(id)]'",
        "let 'a[$(id)]'",
        "read b; let b",
        "'declare' 'a[$(id)]=1'",
        "'typeset' -i x=b",
        "'declare' -ri x",
        "'export' 'a[$(id)]=1'",
        "command printf -v 'a[$(id)]' x",
        "builtin read 'a[$(id)]'",
        "command -p -- test -v 'a[$(id)]'",
        "read -p 'a[$(id)]'",  # zsh: -p takes no value, the word is a name
        "print -rv 'a[$(id)]' x",  # zsh
        "zparseopts 'a=a[$(id)]'",
        "zformat -f 'a[$(id)]' x",
        "'integer' x",
    ],
)
def test_a_builtin_that_evaluates_a_word_is_denied(command: str) -> None:
    with pytest.raises(ShellConstruct):
        parse_command(command)


@pytest.mark.parametrize(
    "command",
    [
        "printf '[%s]' x",
        "printf -v x '[%s]' 'a[1]'",
        "printf -- -v 'a[1]'",
        "read -r -d . x",
        "test -f /x",
        "'declare' -p x",
        "'export' a=b",
        "/usr/bin/printf -v 'a[1]' x",  # not the builtin
        "echo 'a[$(id)]'",
        "grep '[a-z]$' f",
    ],
)
def test_other_uses_stay_allowed(command: str) -> None:
    parse_command(command)


_NAMES = ["printf", "read", "test", "[", "let", "wait", "declare", "typeset", "export",
          "readonly", "unset", "mapfile", "getopts", "command", "builtin", "echo", "print",
          "zparseopts", "zformat", "integer"]  # fmt: skip
_WORDS = ["-v", "-p", "-n", "-a", "-r", "-i", "-ra", "-vb", "--", "!", "x", "b", "%s", "1", "]",
          "a[b]", "a[$(touch {m})]", "a[`touch {m}`]", "c[a[$(touch {m})]]", "x=b"]  # fmt: skip


@st.composite
def builtin_lines(draw: st.DrawFn) -> str:
    commands = []
    for _ in range(draw(st.integers(1, 3))):
        argv = [draw(st.sampled_from(_NAMES))]
        argv += draw(st.lists(st.sampled_from(_WORDS), max_size=4))
        commands.append(shlex.join(argv))
    return "; ".join(commands)


@settings(max_examples=80, deadline=None)
@given(line=builtin_lines(), shell=st.sampled_from(SHELLS))
def test_the_shell_never_runs_code_from_an_accepted_command(
    line: str, shell: str, tmp_path_factory: Any
) -> None:
    """Whatever is accepted, bash or zsh running its canonical text (with standard input that
    a ``read`` would put in a variable) never runs the command substitution inside a word."""
    marker = tmp_path_factory.mktemp("bash") / "pwned"
    text = line.replace("{m}", str(marker))
    try:
        canonical = parse_command(text).canonical()
    except ShellConstruct:
        return
    subprocess.run(
        [shell, "-c", canonical], input=f"a[$(touch {marker})]\n".encode(), capture_output=True,
        timeout=10, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert not marker.exists(), canonical


@pytest.mark.parametrize(
    "name", ["builtin", "trap", "source", ".", "emulate", "zmodload", "hash", "enable"]
)
def test_lint_names_the_builtins_that_run_code(name: str) -> None:
    """``builtin printf -v ...``, ``trap CMD EXIT``, ``source FILE``, ``hash -p /bin/rm ls``
    (then ``ls`` runs rm), ``enable -f lib.so``: each runs what its arguments say, like
    ``command`` and ``eval`` (which were listed)."""
    rules = policies(
        f"""
        rules:
          - id: open
            effect: allow
            ssh: {{commands: ["{name} **"]}}
        """
    )
    assert [f.code for f in lint(rules)] == ["arbitrary-code"]


# --- a long word tree-sitter splits in many nodes ---------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "echo " + "'a'\\x" * 8000,  # one word of 16,000 nodes
        "echo " + '"a"\\x' * 8000,
        "echo a" + "~" * 40000,  # each ~ joined the whole word decoded so far
        "echo " + "'a'~" * 10000,
    ],
)
def test_a_long_word_is_read_in_linear_time(command: str) -> None:
    """The parse runs on the broker's event loop: each node of a split word decoded the whole
    word again, so one 64 KiB command held every session of the node for minutes (206 s)."""
    started = time.perf_counter()
    parse_command(command)
    assert time.perf_counter() - started < 5


_PIECES = st.sampled_from(["a", "'", '"', "\\", "~", "#", "=", ":", "$", "b'c'", "x=~"])


@settings(max_examples=300, deadline=None)
@given(first=st.lists(_PIECES, min_size=1, max_size=6), rest=st.lists(_PIECES, max_size=6))
def test_a_word_decoded_in_parts_reads_as_the_whole_word(first: list[str], rest: list[str]) -> None:
    """Decoding the rest of a word after what its first part decoded to gives what decoding
    the whole word gives: the same text, or a refusal."""
    head, tail = "".join(first), "".join(rest)
    try:
        decoded = _decode_word(head)
    except ShellConstruct:
        return  # the walk never reaches a second part after a refused first one
    try:
        whole: str | None = _decode_word(head + tail)
    except ShellConstruct:
        whole = None
    try:
        parts: str | None = decoded + _decode_word(tail, decoded) if tail else decoded
    except ShellConstruct:
        parts = None
    assert parts == whole, (head, tail)
