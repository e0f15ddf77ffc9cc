"""Argument and path globs (spec 5.2 ``ssh.commands``, 5.5 ``files``).

Conformance examples first, then property tests against a naive reference matcher written
independently of the implementation (recursion over the pattern instead of a regex).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.policy.errors import PatternError
from tether.policy.globs import ArgvPattern, compile_path_glob, compile_token_glob

SETTINGS = settings(max_examples=300, deadline=None)


# --- token globs: conformance ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "candidate", "expected"),
    [
        # '*' is any run except '/', including the empty run
        ("*", "abc", True),
        ("*", "", True),
        ("*", "a/b", False),
        ("inv-*", "inv-", True),
        ("inv-*", "inv-7", True),
        ("/var/log/*.log", "/var/log/syslog.log", True),
        ("/var/log/*.log", "/var/log/nginx/access.log", False),
        ("-*", "-la", True),
        ("*.txt", ".txt", True),
        ("a*b", "a.b", True),
        # '?' is exactly one character except '/'
        ("?", "a", True),
        ("?", "", False),
        ("?", "ab", False),
        ("?", "/", False),
        ("a?c", "abc", True),
        ("a?", "a.", True),
        # '**' inside a token crosses '/'
        ("/data/**", "/data/a/b/c", True),
        ("x**y", "x/a/b/y", True),
        ("**", "any/thing/at/all", True),
        ("**", "", True),
        ("a***b", "a/x/b", True),
        # everything else is literal: no character classes, no escapes
        ("[ab]", "[ab]", True),
        ("[ab]", "a", False),
        ("{a,b}", "{a,b}", True),
        ("{a,b}", "a", False),
        ("\\*", "\\x", True),
        ("\\*", "*", False),
        ("literal", "literal", True),
        ("literal", "Literal", False),
        ("", "", True),
        ("", "x", False),
        # a real control character in a candidate is just a character to a wildcard
        ("*", "\x01", True),
        ("?", "\x02", True),
        ("??", "\x01", False),
        ("a*", "a\x01b", True),
    ],
)
def test_token_glob(pattern: str, candidate: str, expected: bool) -> None:
    assert compile_token_glob(pattern)(candidate) is expected


@pytest.mark.parametrize(
    ("pattern", "candidate"),
    [
        ("/srv/*/x", "/srv/../x"),
        ("/srv/*/x", "/srv/./x"),
        ("/srv/?/x", "/srv/./x"),
        ("/srv/??/x", "/srv/../x"),
        ("*", ".."),
        ("*", "."),
        ("a*", ".."),
        (".*", ".."),
        (".*", "."),
        ("*.", ".."),
        ("?.", ".."),
        (".?", ".."),
        ("/data/**", "/data/../etc/passwd"),
        ("/data/**", "/data/a/../../etc/passwd"),
        ("/data/**", "/data/./x"),
        ("/data/**", "/data/.."),
        ("/data/**/x", "/data/../x"),
        ("**", "../etc"),
        ("**", "a/.."),
        ("**/passwd", "../passwd"),
        ("/tmp/*", "/tmp/.."),
        ("x**", "x/../y"),
        ("*..", ".."),
        ("*/..", "a/../.."),
    ],
)
def test_wildcards_never_match_dot_segments(pattern: str, candidate: str) -> None:
    assert compile_token_glob(pattern)(candidate) is False


@pytest.mark.parametrize(
    ("pattern", "candidate"),
    [
        ("/srv/../x", "/srv/../x"),  # a literal dot segment matches itself
        ("/srv/./*", "/srv/./x"),
        ("*/..", "a/.."),
        ("**/../x", "a/b/../x"),
        ("..", ".."),
        (".*", ".bashrc"),
        ("*", "..."),  # not a dot segment
        ("*", "..x"),
        ("--dir=*", "--dir=.."),  # only '/' delimits segments
        ("a*b", "a..b"),
    ],
)
def test_dot_segments_that_do_match(pattern: str, candidate: str) -> None:
    assert compile_token_glob(pattern)(candidate) is True


@pytest.mark.parametrize(
    ("pattern", "candidate", "expected"),
    [
        ("/data/**", "/data", True),  # whole-segment ** matches zero segments
        ("/data/**", "/data/", True),
        ("/data/**", "/datax", False),
        ("/data/**", "/dat", False),
        ("/a/**/b", "/a/b", True),
        ("/a/**/b", "/a/x/b", True),
        ("/a/**/b", "/a/x/y/b", True),
        ("/a/**/b", "/a/xb", False),
        ("**/x", "x", True),
        ("**/x", "a/b/x", True),
        ("**/x", "ax", False),
        ("/**", "/", True),
        ("/**", "/etc/passwd", True),
        ("/a/**/**/b", "/a/b", True),
        ("**/**", "x/y", True),
        ("/a/x**/b", "/a/b", False),  # '**' inside a segment is character-level
        ("/a/x**/b", "/a/x/y/b", True),
    ],
)
def test_whole_segment_double_star(pattern: str, candidate: str, expected: bool) -> None:
    assert compile_token_glob(pattern)(candidate) is expected


@pytest.mark.parametrize("pattern", ["a\x00", "\x1b[31m", "x\ry", "\x7f", "\x85"])
def test_token_glob_refuses_control_characters(pattern: str) -> None:
    with pytest.raises(PatternError):
        compile_token_glob(pattern)


def test_token_glob_allows_tab_and_newline() -> None:
    assert compile_token_glob("a\tb*")("a\tbc")
    assert compile_token_glob("a\n*")("a\nb")


def test_token_glob_refuses_non_strings() -> None:
    with pytest.raises(PatternError):
        compile_token_glob(b"x")  # type: ignore[arg-type]


# --- path globs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "candidate", "expected"),
    [
        ("/data/**", "/data", True),
        ("/data/**", "/data/x/y", True),
        ("/data/**", "/database", False),
        ("/data/*", "/data/x", True),
        ("/data/*", "/data/x/y", False),
        ("/data/*.csv", "/data/a.csv", True),
        ("/", "/", True),
        ("/", "/x", False),
        ("/**", "/anything/at/all", True),
        ("/home/*/.ssh/**", "/home/bob/.ssh/id_rsa", True),
        ("/etc/passwd", "/etc/passwd", True),
        ("/etc/passwd", "/etc/passwd2", False),
    ],
)
def test_path_glob(pattern: str, candidate: str, expected: bool) -> None:
    assert compile_path_glob(pattern)(candidate) is expected


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "data/**",
        "*",
        "**",
        "~/x",
        "/data//x",
        "/data/",
        "/data/./x",
        "/data/../x",
        "/data/...",
        "/data/\\x",
        "/data/\x00",
        "/data/\n",
        None,
    ],
)
def test_path_glob_refuses_patterns_that_never_match(pattern: str) -> None:
    with pytest.raises(PatternError):
        compile_path_glob(pattern)


# --- argv patterns --------------------------------------------------------------------------


def test_argv_pattern_fields() -> None:
    pattern = ArgvPattern.compile("rm -f '/tmp/my dir/*'")
    assert pattern.source == "rm -f '/tmp/my dir/*'"
    assert pattern.command_name == "rm"
    assert pattern.tokens == ("rm", "-f", "/tmp/my dir/*")
    assert pattern == ArgvPattern.compile("rm -f '/tmp/my dir/*'")
    assert pattern.matches(["rm", "-f", "/tmp/my dir/x"])


@pytest.mark.parametrize(
    ("pattern", "argv", "expected"),
    [
        ("rm -f /tmp/*", ["rm", "-f", "/tmp/x"], True),
        ("rm -f /tmp/*", ["rm", "-f", "/tmp/../etc"], False),
        ("rm -f /tmp/*", ["rm", "-f", "/tmp/a/b"], False),
        ("rm -f /tmp/*", ["rm", "-f"], False),
        ("rm -f /tmp/*", ["rm", "-f", "/tmp/x", "/tmp/y"], False),
        ("rm -f /tmp/*", ["/bin/rm", "-f", "/tmp/x"], False),  # names compare exactly
        ("/bin/rm -f /tmp/*", ["rm", "-f", "/tmp/x"], False),
        ("/bin/rm -f /tmp/*", ["/bin/rm", "-f", "/tmp/x"], True),
        ("ls", ["ls"], True),
        ("ls", ["ls", "-l"], False),
        ("ls **", ["ls"], True),
        ("ls **", ["ls", "-l", "/tmp/../etc", ""], True),  # '**' token: any content
        ("git ** --force **", ["git", "push", "--force"], True),
        ("git ** --force **", ["git", "--force"], True),
        ("git ** --force **", ["git", "push", "origin", "--force", "main"], True),
        ("git ** --force **", ["git", "push", "origin"], False),
        ("git log ** -- *", ["git", "log", "-n", "3", "--", "README"], True),
        ("git log ** -- *", ["git", "log", "--", "a", "b"], False),
        ("kubectl get pods -n ?*", ["kubectl", "get", "pods", "-n", "prod"], True),
        ("kubectl get pods -n ?*", ["kubectl", "get", "pods", "-n", ""], False),
        ("grep ''", ["grep", ""], True),
        ("grep ''", ["grep", "x"], False),
        ("echo * **", ["echo"], False),
        ("cat /var/log/**", ["cat", "/var/log/a/../../../etc/shadow"], False),
        ("ls", [], False),
    ],
)
def test_argv_pattern_matches(pattern: str, argv: list[str], expected: bool) -> None:
    assert ArgvPattern.compile(pattern).matches(argv) is expected


@pytest.mark.parametrize(
    "pattern",
    ["", "   ", "rm 'unbalanced", 'rm "x', "rm \\", "* -rf", "r?m", "'' x", "'a\x00' b", None],
)
def test_argv_pattern_errors(pattern: str) -> None:
    with pytest.raises(PatternError):
        ArgvPattern.compile(pattern)


def test_argv_pattern_token_control_character() -> None:
    with pytest.raises(PatternError):
        ArgvPattern.compile("echo 'a\x1bb'")


# --- reference matchers ---------------------------------------------------------------------


def _dot_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every '.' or '..' segment of text."""
    spans, start = [], 0
    for segment in text.split("/"):
        if segment in (".", ".."):
            spans.append((start, start + len(segment)))
        start += len(segment) + 1
    return spans


def _expansions(pattern: str) -> set[str]:
    """Variants of pattern where each whole-segment '**' may also match zero segments."""
    segments = pattern.split("/")
    wholes = [
        index
        for index, segment in enumerate(segments)
        if len(segments) > 1 and len(segment) >= 2 and not segment.strip("*")
    ]
    variants = set()
    for count in range(len(wholes) + 1):
        for dropped in itertools.combinations(wholes, count):
            kept = [seg for index, seg in enumerate(segments) if index not in dropped]
            variants.add("/".join(kept))
    return variants


def _char_match(pattern: str, candidate: str) -> bool:
    """Character-level glob with the dot-segment rule, by plain recursion."""
    tokens = re.findall(r"\*\*+|\*|\?|[^*?]", pattern)
    in_dot = [False] * len(candidate)
    for start, end in _dot_spans(candidate):
        for i in range(start, end):
            in_dot[i] = True
    literal_dot_tokens = _literal_dot_token_starts(tokens)

    @cache
    def go(t: int, c: int) -> bool:
        if t == len(tokens):
            return c == len(candidate)
        token = tokens[t]
        if token.startswith("*"):
            crosses = len(token) >= 2
            if go(t + 1, c):
                return True
            j = c
            while j < len(candidate) and not in_dot[j] and (crosses or candidate[j] != "/"):
                j += 1
                if go(t + 1, j):
                    return True
            return False
        if c == len(candidate):
            return False
        if token == "?":
            return candidate[c] != "/" and not in_dot[c] and go(t + 1, c + 1)
        if token != candidate[c]:
            return False
        if in_dot[c] and t not in literal_dot_tokens:
            return False
        return go(t + 1, c + 1)

    return go(0, 0)


def _literal_dot_token_starts(tokens: list[str]) -> set[int]:
    """Indexes of tokens that are literal characters of a whole '.'/'..' pattern segment."""
    result: set[int] = set()
    segment_start = 0
    for index in range(len(tokens) + 1):
        if index == len(tokens) or tokens[index] == "/":
            segment = tokens[segment_start:index]
            if "".join(segment) in (".", ".."):
                result.update(range(segment_start, index))
            segment_start = index + 1
    return result


def reference_glob(pattern: str, candidate: str) -> bool:
    return any(_char_match(variant, candidate) for variant in _expansions(pattern))


def reference_argv(tokens: Sequence[str], argv: Sequence[str]) -> bool:
    if not argv or argv[0] != tokens[0]:
        return False

    @cache
    def go(t: int, a: int) -> bool:
        if t == len(tokens):
            return a == len(argv)
        if tokens[t] == "**":
            return any(go(t + 1, b) for b in range(a, len(argv) + 1))
        return a < len(argv) and reference_glob(tokens[t], argv[a]) and go(t + 1, a + 1)

    return go(1, 1)


def test_reference_matcher_sanity() -> None:
    assert reference_glob("/a/**/b", "/a/b")
    assert reference_glob("/data/**", "/data")
    assert not reference_glob("/srv/*/x", "/srv/../x")
    assert reference_glob("/srv/../x", "/srv/../x")
    assert not reference_glob("*..", "..")
    assert reference_glob("**/x", "x")


# --- properties -----------------------------------------------------------------------------

pattern_text = st.lists(st.sampled_from(["a", "b", ".", "..", "/", "*", "**", "?"]), max_size=8)
candidate_text = st.lists(st.sampled_from(["a", "b", ".", "..", "/", "\x01"]), max_size=10)


@SETTINGS
@given(pattern_text.map("".join), candidate_text.map("".join))
def test_token_glob_agrees_with_reference(pattern: str, candidate: str) -> None:
    assert compile_token_glob(pattern)(candidate) is reference_glob(pattern, candidate)


@SETTINGS
@given(pattern_text.map("".join), candidate_text.map("".join))
def test_wildcard_never_matches_a_dot_segment(pattern: str, candidate: str) -> None:
    """(d) If the pattern has no literal '.'/'..' segment, no dot segment is ever matched."""
    pattern_has_literal_dot = any(seg in (".", "..") for seg in pattern.split("/"))
    if _dot_spans(candidate) and not pattern_has_literal_dot:
        assert compile_token_glob(pattern)(candidate) is False


@SETTINGS
@given(
    st.lists(st.sampled_from(["a", "b", "x", ".", "/", "-"]), min_size=1, max_size=8).map(
        lambda parts: "/" + "".join(parts)
    )
)
def test_tmp_star_never_matches_traversal(suffix: str) -> None:
    """(d) ArgvPattern('rm -f /tmp/*') never matches an argv holding '/tmp/../etc'."""
    pattern = ArgvPattern.compile("rm -f /tmp/*")
    for argv in (["rm", "-f", "/tmp/../etc"], ["rm", "-f", "/tmp/.." + suffix]):
        assert not pattern.matches(argv)
    assert not pattern.matches(["rm", "-f", "/tmp/../etc" + suffix])


argv_token = st.sampled_from(["a", "b", "*", "?", "**", "a*", "/x/*", "/x/**", "..", ""])
argv_word = st.sampled_from(["a", "b", "ab", "", "/x/y", "/x/../y", "..", "/x/.", "-f"])


@SETTINGS
@given(st.lists(argv_token, max_size=6), st.lists(argv_word, max_size=7))
def test_argv_pattern_agrees_with_reference(tokens: list[str], words: list[str]) -> None:
    pattern = ArgvPattern(
        " ".join(["cmd", *tokens]),
        "cmd",
        ("cmd", *tokens),
        tuple(None if t == "**" else compile_token_glob(t) for t in tokens),
    )
    argv = ["cmd", *words]
    assert pattern.matches(argv) is reference_argv(("cmd", *tokens), argv)


@SETTINGS
@given(st.lists(st.sampled_from(["a", "b.c", "*", "**", "?x", "data"]), max_size=5))
def test_path_glob_is_the_token_glob_on_canonical_paths(segments: list[str]) -> None:
    pattern = "/" + "/".join(segments) if segments else "/"
    for candidate in ("/", "/a", "/a/b.c", "/data/x/y", "/xx", "/a/data/b"):
        assert compile_path_glob(pattern)(candidate) is compile_token_glob(pattern)(candidate)


@SETTINGS
@given(st.text(max_size=40))
def test_compilers_raise_only_pattern_error(pattern: str) -> None:
    for compile_ in (compile_token_glob, compile_path_glob):
        try:
            matcher = compile_(pattern)
        except PatternError:
            continue
        assert matcher(pattern) in (True, False)
    try:
        argv_pattern = ArgvPattern.compile(pattern)
    except PatternError:
        return
    assert argv_pattern.matches(argv_pattern.tokens) in (True, False)
