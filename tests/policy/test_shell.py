"""The SSH command parser (spec 5.2): what is plain words, what is a shell construct.

Every item of the spec's deny list has examples here, with the bypass classes around them:
chaining, substitution, quoting tricks, redirections, assignments, compound commands and
the places where tree-sitter-bash and a POSIX shell read the same bytes differently.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tether.policy.errors import ShellConstruct
from tether.policy.shell import (
    MAX_COMMAND_LENGTH,
    MAX_DROPPED_DASHES,
    ParsedCommand,
    SimpleCommand,
    parse_command,
    quote_word,
)


def argvs(command: str) -> list[tuple[str, ...]]:
    return [c.argv for c in parse_command(command).commands]


def denied(command: str) -> str:
    with pytest.raises(ShellConstruct) as info:
        parse_command(command)
    assert info.value.reason == "shell-construct"
    return info.value.detail


# --- accepted commands ----------------------------------------------------------------------


def test_pipeline_and_list() -> None:
    parsed = parse_command("ls -la /var/log | grep -v debug && echo done")
    assert parsed == ParsedCommand(
        (
            SimpleCommand(("ls", "-la", "/var/log")),
            SimpleCommand(("grep", "-v", "debug")),
            SimpleCommand(("echo", "done")),
        ),
        ("|", "&&"),
    )
    assert parsed.canonical() == "ls -la /var/log | grep -v debug && echo done"


@pytest.mark.parametrize(
    ("command", "expected_argvs", "operators"),
    [
        ("a; b", [("a",), ("b",)], (";",)),
        ("a && b", [("a",), ("b",)], ("&&",)),
        ("a || b", [("a",), ("b",)], ("||",)),
        ("a | b", [("a",), ("b",)], ("|",)),
        ("a\nb", [("a",), ("b",)], (";",)),
        ("a\n\n\nb\n", [("a",), ("b",)], (";",)),
        ("a;\nb", [("a",), ("b",)], (";",)),
        ("a&&b||c|d;e", [("a",), ("b",), ("c",), ("d",), ("e",)], ("&&", "||", "|", ";")),
        ("a &&\n b", [("a",), ("b",)], ("&&",)),
        ("a ||\n\n b", [("a",), ("b",)], ("||",)),
        ("a |\n b", [("a",), ("b",)], ("|",)),
        ("a | b && c; d || e | f", [(x,) for x in "abcdef"], ("|", "&&", ";", "||", "|")),
        # tree-sitter nests these the wrong way round; the source order is what counts
        ("a | b | c && d", [(x,) for x in "abcd"], ("|", "|", "&&")),
        ("a | b | c || d | e", [(x,) for x in "abcde"], ("|", "|", "||", "|")),
        ("ls;", [("ls",)], ()),
        ("  ls  ", [("ls",)], ()),
        ("\n\nls\n", [("ls",)], ()),
    ],
)
def test_chaining_gives_every_simple_command(
    command: str, expected_argvs: list[tuple[str, ...]], operators: tuple[str, ...]
) -> None:
    parsed = parse_command(command)
    assert [c.argv for c in parsed.commands] == expected_argvs
    assert parsed.operators == operators


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("'rm' -rf x", ("rm", "-rf", "x")),
        ("r\\m -rf x", ("rm", "-rf", "x")),
        ("'r''m' x", ("rm", "x")),
        ('"r"m x', ("rm", "x")),
        ('r"m" x', ("rm", "x")),
        ("\\rm x", ("rm", "x")),
        ("echo \\;", ("echo", ";")),
        ("echo a\\;b", ("echo", "a;b")),
        ("echo \\*", ("echo", "*")),
        ("echo '*' \"?\" \\[", ("echo", "*", "?", "[")),
        ("echo '$(x)'", ("echo", "$(x)")),
        ("echo '`id`'", ("echo", "`id`")),
        ("echo '${IFS}'", ("echo", "${IFS}")),
        ('echo "\\$(x)" \\$HOME', ("echo", "$(x)", "$HOME")),
        ('echo "a\\"b"', ("echo", 'a"b')),
        ('echo "a\\\\b"', ("echo", "a\\b")),
        ('echo "a\\b"', ("echo", "a\\b")),  # in "..", a backslash only escapes $ ` " \ newline
        ('echo "a\\nb"', ("echo", "a\\nb")),
        ("echo 'a\\nb'", ("echo", "a\\nb")),
        ("echo 'a\\'", ("echo", "a\\")),
        ("echo \\'", ("echo", "'")),
        ("echo 'it'\\''s'", ("echo", "it's")),
        ("echo 'a'\\$ 'b'\\x", ("echo", "a$", "bx")),  # tree-sitter splits these words
        ("echo a\\ b", ("echo", "a b")),
        ("echo a\\\\b", ("echo", "a\\b")),
        ("echo '' \"\"", ("echo", "", "")),
        ("echo 'a\nb'", ("echo", "a\nb")),
        ('echo "a\nb"', ("echo", "a\nb")),
        ('echo "a\\\nb"', ("echo", "ab")),  # line continuation inside double quotes
        ("echo 'a\\\nb'", ("echo", "a\\\nb")),  # but not inside single quotes
        ("ls \\\n -la", ("ls", "-la")),  # line continuation between words
        ("ls\t-l", ("ls", "-l")),
        ("echo a#b", ("echo", "a#b")),
        ("echo \\#b", ("echo", "#b")),
        ("echo a~ x~y", ("echo", "a~", "x~y")),
        ("echo '~' \\~ \"~\"", ("echo", "~", "~", "~")),
        ("echo a=b --x=y", ("echo", "a=b", "--x=y")),
        ("'A=b' cmd", ("A=b", "cmd")),
        ("echo if then fi done", ("echo", "if", "then", "fi", "done")),
        ("'time' ls", ("time", "ls")),
        ("'if' x", ("if", "x")),
        ("test ! -f x", ("test", "!", "-f", "x")),
        ("echo %1 ^x !x @x +x", ("echo", "%1", "^x", "!x", "@x", "+x")),
        ("echo 1 -2 0x1 2#1", ("echo", "1", "-2", "0x1", "2#1")),
        ("echo ü 'ä' \"ö\"", ("echo", "ü", "ä", "ö")),
        ("ls\u00a0-la", ("ls\u00a0-la",)),  # a no-break space is not a blank to sh
        ("echo 'a\tb'", ("echo", "a\tb")),
    ],
)
def test_quote_and_escape_removal(command: str, argv: tuple[str, ...]) -> None:
    assert argvs(command) == [argv]


@pytest.mark.parametrize(
    ("command", "argv", "redirects"),
    [
        ("ls 2>/dev/null", ("ls",), ("2>/dev/null",)),
        ("ls >/dev/null", ("ls",), (">/dev/null",)),
        ("ls > /dev/null", ("ls",), (">/dev/null",)),
        ("ls >>/dev/null", ("ls",), (">>/dev/null",)),
        ("cat </dev/null", ("cat",), ("</dev/null",)),
        ("ls 2>&1", ("ls",), ("2>&1",)),
        ("ls 2>& 1", ("ls",), ("2>&1",)),
        ("ls >&2", ("ls",), (">&2",)),
        ("ls 1>&2 <&3", ("ls",), ("1>&2", "<&3")),
        ("ls 2>&1 3>&2", ("ls",), ("2>&1", "3>&2")),
        ("ls 2>&1 3", ("ls", "3"), ("2>&1",)),
        ("ls '0'<&3", ("ls", "0"), ("<&3",)),
        ("ls >/dev/null 2>&1", ("ls",), (">/dev/null", "2>&1")),
        ("ls 2>&1 >/dev/null", ("ls",), ("2>&1", ">/dev/null")),  # order is kept
        ("ls '/dev/null' >\"/dev/null\"", ("ls", "/dev/null"), (">/dev/null",)),
        (">/dev/null ls -l", ("ls", "-l"), (">/dev/null",)),
        ("ls >/dev/null -la", ("ls", "-la"), (">/dev/null",)),
        ("ls >/dev/null a 2>/dev/null b", ("ls", "a", "b"), (">/dev/null", "2>/dev/null")),
        ("ls 2>&1 x", ("ls", "x"), ("2>&1",)),
        ("ls 2 >/dev/null", ("ls", "2"), (">/dev/null",)),  # '2 >' is an argument
        ("ls2>/dev/null", ("ls2",), (">/dev/null",)),
        ("ls>/dev/null", ("ls",), (">/dev/null",)),
        ("ls 2>\\\n/dev/null", ("ls",), ("2>/dev/null",)),
    ],
)
def test_allowed_redirections(
    command: str, argv: tuple[str, ...], redirects: tuple[str, ...]
) -> None:
    parsed = parse_command(command)
    assert parsed.commands == (SimpleCommand(argv, redirects),)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # tree-sitter hangs a redirection after a list or pipeline on the whole of it; in sh
        # it belongs to the last simple command only
        ("a && b 2>/dev/null", [("a",), ("b", "2>/dev/null")]),
        ("a &&\nb 2>/dev/null", [("a",), ("b", "2>/dev/null")]),
        ("a |\nb 2>&1", [("a",), ("b", "2>&1")]),
        ("a | b c 2>&1 d", [("a",), ("b", "c", "d", "2>&1")]),
        ("a && b 2>&1 | c", [("a",), ("b", "2>&1"), ("c",)]),
        ("a | b 2>&1 && c", [("a",), ("b", "2>&1"), ("c",)]),
        ("a 2>&1 && b >/dev/null", [("a", "2>&1"), ("b", ">/dev/null")]),
        ("a && b | c 2>&1 >/dev/null x", [("a",), ("b",), ("c", "x", "2>&1", ">/dev/null")]),
    ],
)
def test_redirections_belong_to_one_simple_command(
    command: str, expected: list[tuple[str, ...]]
) -> None:
    parsed = parse_command(command)
    assert [(*c.argv, *c.redirects) for c in parsed.commands] == expected


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # tree-sitter can run one command over a line break; to sh the newline ends it
        ("a | b | c\nd 2>/dev/null", [("a",), ("b",), ("c",), ("d", "2>/dev/null")]),
        ("a|b|c\n\nd e 2>&1 f", [("a",), ("b",), ("c",), ("d", "e", "f", "2>&1")]),
        ("a | b| c\n2>&1 d", [("a",), ("b",), ("c",), ("d", "2>&1")]),
    ],
)
def test_a_newline_ends_a_command(command: str, expected: list[tuple[str, ...]]) -> None:
    parsed = parse_command(command)
    assert [(*c.argv, *c.redirects) for c in parsed.commands] == expected
    assert parsed.operators == ("|", "|", ";")


@pytest.mark.parametrize(
    ("command", "detail"),
    [
        ("a | b| c\nif 2>&1", "reserved word 'if'"),
        ("a | b| c\nA=b 2>&1", "variable assignment"),
        ("a | b| c\n2>&1", "redirection without a command"),
        ("a | b | c\n>/dev/null", "redirection without a command"),
    ],
)
def test_a_command_after_a_newline_is_checked_as_a_command(command: str, detail: str) -> None:
    assert detail in denied(command)


def test_long_redirected_chains() -> None:
    for operator in (" && ", " | ", "; "):
        parsed = parse_command(operator.join(f"c{i} x 2>&1" for i in range(1000)))
        assert len(parsed.commands) == 1000
        assert all(c.redirects == ("2>&1",) for c in parsed.commands)


def test_canonical_requotes_every_word() -> None:
    parsed = parse_command("r\\m -f 'a b' \"c'd\" '' \\$HOME 'x=1' '--y=~' 'if'")
    assert parsed.canonical() == "rm -f 'a b' 'c'\"'\"'d' '' '$HOME' x=1 '--y=~' if"
    assert shlex.split(parsed.canonical()) == list(parsed.commands[0].argv)


@pytest.mark.parametrize(
    ("command", "canonical"),
    [
        ("'if' x", "'if' x"),  # reserved words are quoted as command names
        ("'time' ls", "'time' ls"),
        ("'export' a=b", "'export' a=b"),  # so are bash's declaration builtins
        ("'A=b' c=d", "'A=b' c=d"),  # an assignment-looking name stays a name
        ("ls =x", "ls '=x'"),  # zsh's =cmd expansion
        ("echo '!x' '%1' '#x'", "echo '!x' '%1' '#x'"),
        ("a\nb", "a; b"),
        ("a  &&   b", "a && b"),
        (">/dev/null ls 2>&1", "ls >/dev/null 2>&1"),
    ],
)
def test_canonical_text(command: str, canonical: str) -> None:
    parsed = parse_command(command)
    assert parsed.canonical() == canonical
    assert parse_command(canonical) == parsed


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("ls", "ls"),
        ("", "''"),
        ("a b", "'a b'"),
        ("it's", "'it'\"'\"'s'"),
        ("~", "'~'"),
        ("$x", "'$x'"),
        ("a=b", "a=b"),
        ("=b", "'=b'"),
        ("-", "'-'"),
        ("--", "--"),
        ("é", "'é'"),
    ],
)
def test_quote_word(word: str, quoted: str) -> None:
    assert quote_word(word) == quoted
    assert shlex.split(quoted) == [word]


def test_quote_word_for_command_names() -> None:
    assert quote_word("ls", command_name=True) == "ls"
    assert quote_word("a=b", command_name=True) == "'a=b'"
    assert quote_word("-", command_name=True) == "'-'"
    assert quote_word("a@b", command_name=True) == "'a@b'"
    for word in ("if", "then", "time", "coproc", "export", "declare", "repeat", "!"):
        assert quote_word(word, command_name=True) == f"'{word}'"
        assert quote_word(word) == (word if word.isalpha() else f"'{word}'")


# --- denied: the spec's list ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "detail"),
    [
        # command substitution
        ("echo $(id)", "command substitution"),
        ("echo `id`", "command substitution"),
        ('echo "$(id)"', "command substitution"),
        ('echo "`id`"', "command substitution"),
        ('echo "a$(id)b"', "command substitution"),
        ("echo x$(id)", "command substitution"),
        ("$(id)", "command substitution"),
        # process substitution
        ("diff <(ls a) <(ls b)", "process substitution"),
        ("tee >(cat)", "process substitution"),
        # any $ expansion
        ("echo $HOME", "variable expansion"),
        ("echo ${HOME}", "variable expansion"),
        ("ls${IFS}-la", "variable expansion"),
        ('echo "$HOME"', "variable expansion"),
        ('echo "${x:-$(id)}"', "variable expansion"),
        ("echo $1 $@ $# $? $$ $! $-", "variable expansion"),
        ("echo $", "variable expansion"),
        ('echo "$"', "variable expansion"),
        ("echo x$", "variable expansion"),
        ("$cmd", "variable expansion"),
        ('echo $"msg"', "variable expansion"),
        # arithmetic
        ("echo $((1+1))", "arithmetic"),
        ('echo "$((1+1))"', "arithmetic"),
        ("((x++))", "arithmetic"),
        # unquoted glob and brace characters
        ("ls *", "glob character '*'"),
        ("ls a*b", "glob character '*'"),
        ("ls ?", "glob character '?'"),
        ("ls [ab]", "glob character '['"),
        ("ls a]", "glob character ']'"),
        ("echo {a,b}", "brace"),
        ("echo a{1..3}", "brace"),
        ("echo }", "brace character '}'"),
        ("[ -f x ]", "test command"),
        # a leading ~
        ("ls ~", "leading ~"),
        ("ls ~/x", "leading ~"),
        ("ls ~root", "leading ~"),
        ("ls ''~", "leading ~"),
        ("ls a=~/x", "leading ~"),
        ("ls PATH=a:~/b", "leading ~"),
        # variable assignments
        ("A=b cmd", "variable assignment"),
        ("PATH=/tmp ls", "variable assignment"),
        ("LD_PRELOAD=/x.so ls", "variable assignment"),
        ("A=b", "variable assignment"),
        ("A+=b ls", "variable assignment"),
        ("A[1]=b ls", "variable assignment"),
        ("a=(1 2)", "variable assignment"),
        ("A=b B=c ls", "variable assignment"),
        (">/dev/null A=b ls", "variable assignment"),
        ("export A=b", "declaration command"),
        ("local a", "declaration command"),
        ("declare -x a", "declaration command"),
        ("readonly a", "declaration command"),
        ("typeset a", "declaration command"),
        ("unset PATH", "unset"),
        # redirections other than /dev/null or descriptor duplication
        ("ls > /etc/passwd", "redirection > to a file"),
        ("ls >> f", "redirection >> to a file"),
        ("cat < f", "redirection < to a file"),
        ("ls 2>/tmp/err", "redirection > to a file"),
        ("ls >/dev/null2", "redirection > to a file"),
        ("ls >/dev/nul", "redirection > to a file"),
        ("ls &> /dev/null", "redirection &>"),
        ("ls &>> /dev/null", "redirection &>>"),
        ("ls >| /dev/null", "redirection >|"),
        ("ls <> /dev/null", "does not parse"),
        ("ls >&-", "closes a descriptor"),
        ("ls 2<&-", "closes a descriptor"),
        ("ls >&file", "redirection >& to something other than a descriptor"),
        ("ls 2>&1x", "redirection >& to something other than a descriptor"),
        ("ls 2>&12", "redirection >& to something other than a descriptor"),
        ("ls 10>/dev/null", "descriptor '10'"),
        ("ls {fd}>/dev/null", "brace"),
        (">/dev/null", "redirection without a command"),
        ("2>&1", "redirection without a command"),
        # here-documents and here-strings
        ("cat <<EOF\nhi\nEOF", "here-document"),
        ("cat <<-EOF\n\thi\nEOF", "here-document"),
        ("cat <<'EOF'\nhi\nEOF", "here-document"),
        ("cat <<< hi", "here-string"),
        # background
        ("ls &", "background &"),
        ("ls & rm -rf /", "background &"),
        ("ls&", "background &"),
        ("echo a&b", "background &"),
        # subshells, groups, functions, compound commands
        ("(ls)", "subshell"),
        ("(ls) | cat", "subshell"),
        ("ls | (cat)", "subshell"),
        ("{ ls; }", "group"),
        ("f() { ls; }", "function definition"),
        ("function f { ls; }", "function definition"),
        ("if true; then ls; fi", "compound command 'if'"),
        ("for i in a; do ls; done", "compound command 'for'"),
        ("for ((i=0;i<1;i++)); do ls; done", "compound command 'for (( ))'"),
        ("while true; do ls; done", "compound command 'while'"),
        ("until false; do ls; done", "compound command 'while' or 'until'"),
        ("case x in x) ls;; esac", "compound command 'case'"),
        ("select x in a; do ls; done", "compound command 'for' or 'select'"),
        ("[[ -f x ]]", "test command"),
        ("ls && [[ -f x ]]", "test command"),
        # ANSI-C quoting
        ("echo $'\\x41'", "ANSI-C quoting"),
        ("$'rm' -rf /", "ANSI-C quoting"),
        # NUL and control characters
        ("ls\x00", "NUL"),
        ("ls\x00; rm -rf /", "NUL"),
        ("ls\r\nrm", "control character"),
        ("ls \x1b[31m", "control character"),
        ("ls\x7f", "control character"),
        ("ls\x85", "control character"),
        ("ls\x0b-la", "control character"),
        ("ls\x0c", "control character"),
        ("echo 'a\x01'", "control character"),
        # |&, negation
        ("ls |& cat", "|&"),
        ("! ls", "negation"),
        ("ls | ! grep x", "negation"),
        # reserved words as command names
        ("time ls", "reserved word 'time'"),
        ("coproc ls", "reserved word 'coproc'"),
        ("then ls", "reserved word 'then'"),
        ("ls; do", "reserved word 'do'"),
        # comments
        ("ls # hi", "comment"),
        ("ls #; rm -rf /", "comment"),
        ("# x", "comment"),
        ("echo \\ #b", "comment"),
        # empty
        ("", "empty command"),
        ("   \t\n ", "empty command"),
    ],
)
def test_denied_constructs(command: str, detail: str) -> None:
    assert detail in denied(command)


@pytest.mark.parametrize(
    "command",
    [
        "echo 'unterminated",
        'echo "unterminated',
        "echo \"a'",
        "ls \\",
        "ls -la |",
        "ls &&",
        "ls ||",
        "&& ls",
        "| ls",
        ";ls",
        "ls; ; ls",
        "ls;;",
        "ls ;& ls",
        "ls\n;ls",
        "ls\n&& b",
        "ls\n| b",
        "ls &&& b",
        "ls ||| b",
        "ls | | b",
        "ls )",
        "ls (",
        "ls !(x)",
        "ls @(a|b)",
        "echo \\$(x)",
        "if",
        "fi",
        "ls >",
        "ls 2>",
        "ls 2>\n/dev/null",
        "ls &\\\n& b",
    ],
)
def test_what_does_not_parse_is_denied(command: str) -> None:
    denied(command)


# --- where tree-sitter and sh disagree ------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "ls \\ -la",  # tree-sitter skips '\ ' between words; sh reads the word ' -la'
        "ls a \\ ",  # a word that is an escaped blank: tree-sitter does not parse it
        "ls \\\tx",
        "r\\\nm -rf /",  # sh joins 'rm'; tree-sitter sees 'r' and 'm'
        '"r"\\\nm',
        "ls\\\n2>/dev/null",  # sh: word 'ls2', then '>'
        "ls\\\n-la",
        "ls 1>&2 0<&3",  # sh: descriptor 0; tree-sitter: the argument 0, then <&3
        "ls 2>/dev/null 0</dev/null",
        "a\n\\| b",  # tree-sitter: one command with the word '<newline>|'; sh: two commands
        "a\n\\;",
    ],
)
def test_grammar_disagreements_are_denied(command: str) -> None:
    denied(command)


def test_a_lone_dash_the_grammar_drops_is_read_again() -> None:
    # tree-sitter reads `cat - 2>&1` as `cat 2>&1` (the '-' skipped); the parser reads the
    # skipped lone '-' again quoted, so the argv is sh's and the canonical text keeps it
    for command, argv in (
        ("cat - 2>&1", ("cat", "-")),
        ("cat - - 2>&1", ("cat", "-", "-")),
        ("cat -\t 2>/dev/null x", ("cat", "-", "x")),
        ("a - 1>&2 && b - 2>&1", ("a", "-")),
    ):
        parsed = parse_command(command)
        assert parsed.commands[0].argv == argv
        assert parse_command(parsed.canonical()) == parsed
    assert parse_command("cat - 2>&1").canonical() == "cat '-' 2>&1"
    # Only a lone '-' between blanks: `-2>&1` is sh's word '-2' then `>&1`, still refused
    assert "descriptor" in denied("cat -2>&1")
    assert "without a command" in denied("- 2>&1")
    # A bounded number of retries: one dropped dash too many is the skipped-text refusal
    most = "; ".join(["cat - 2>&1"] * MAX_DROPPED_DASHES)
    assert [c.argv for c in parse_command(most).commands] == [("cat", "-")] * MAX_DROPPED_DASHES
    assert "skipped" in denied(most + "; cat - 2>&1")


def test_command_names_tree_sitter_cannot_read_bare() -> None:
    # tree-sitter has no parse for these bare command names: a false deny, never a misread;
    # quoted (as canonical() writes them) they are ordinary names
    for name in ("a@b", "1@", "a+:"):
        assert "does not parse" in denied(f"{name} x")
        assert argvs(f"'{name}' x") == [(name, "x")]
        assert quote_word(name, command_name=True) == f"'{name}'"


def test_unicode_blanks_are_not_separators() -> None:
    for blank in ("\u00a0", "\u2003", "\u3000", "\u2028"):
        assert argvs(f"rm{blank}-rf") == [(f"rm{blank}-rf",)]


# --- limits, types, cache -------------------------------------------------------------------


def test_long_commands() -> None:
    long_ok = "echo " + "a" * (MAX_COMMAND_LENGTH - 5)
    assert len(parse_command(long_ok).commands[0].argv[1]) == MAX_COMMAND_LENGTH - 5
    assert "longer than" in denied(long_ok + "a")


def test_non_strings_and_surrogates() -> None:
    assert "not a string" in denied(b"ls")  # type: ignore[arg-type]
    assert "not a string" in denied(None)  # type: ignore[arg-type]
    assert "surrogate" in denied("ls \ud800")


def test_results_and_denials_are_stable_across_the_cache() -> None:
    first = parse_command("ls -l")
    assert parse_command("ls -l") is first
    assert denied("ls $(id)") == denied("ls $(id)") == "command substitution"


def test_many_commands() -> None:
    parsed = parse_command(" && ".join(f"echo {i}" for i in range(500)))
    assert len(parsed.commands) == 500
    assert parsed.operators == ("&&",) * 499


# --- the result types -----------------------------------------------------------------------


def test_result_types_validate() -> None:
    with pytest.raises(ValueError):
        SimpleCommand(())
    with pytest.raises(ValueError):
        SimpleCommand(("ls", "a\x00"))
    with pytest.raises(ValueError):
        SimpleCommand(("ls", 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SimpleCommand(("ls",), (">/etc/passwd",))
    with pytest.raises(ValueError):
        ParsedCommand(())
    with pytest.raises(ValueError):
        ParsedCommand((SimpleCommand(("a",)), SimpleCommand(("b",))), ())
    with pytest.raises(ValueError):
        ParsedCommand((SimpleCommand(("a",)), SimpleCommand(("b",))), ("&",))
    ok = ParsedCommand((SimpleCommand(("a",), ("2>&1",)), SimpleCommand(("b",))), ("|",))
    assert ok.canonical() == "a 2>&1 | b"


# --- a real POSIX shell agrees --------------------------------------------------------------

SHELLS = [name for name in ("sh", "dash", "bash") if shutil.which(name)]


def test_real_shells_are_there_to_agree_with() -> None:
    # The agreement tests below need real shells; CI machines have sh and bash.
    assert {"sh", "bash"} <= set(SHELLS)


AGREEMENT_CORPUS = [
    "r\\m -rf 'a b' \"c\"d e\\ f",
    'echo \'it\'\\\'\'s\' "a\\"b" "a\\\\b" "a\\b" \\\\',
    'echo "\\$(x)" \\$HOME \'$(x)\' "a\\\nb"',
    "echo a#b \\#b a~ x=y --z=w '' \"\" ü",
    "ls \\\n -la  \t x",
    "echo 'a\nb' \"c\nd\"",
    "echo %1 ^x !x @x +x 1 -2 0x1",
]


@pytest.mark.parametrize("command", AGREEMENT_CORPUS)
def test_a_posix_shell_reads_the_same_words(command: str, tmp_path: Path) -> None:
    argv = list(parse_command(command).commands[0].argv)
    for shell in SHELLS:
        assert shell_words(shell, command, tmp_path) == argv
        assert shell_words(shell, parse_command(command).canonical(), tmp_path) == argv


def shell_words(shell: str, command: str, cwd: Path) -> list[str]:
    """The words a real shell makes of ``command`` (run as printf's arguments, PATH empty)."""
    result = subprocess.run(
        [shutil.which(shell) or shell, "-c", "printf '%s\\0' " + command],
        capture_output=True,
        cwd=cwd,
        env={"PATH": "", "HOME": "/nonexistent"},
        timeout=10,
        check=False,
    )
    return result.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]
