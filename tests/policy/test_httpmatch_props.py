"""Property tests for HTTP paths and path patterns (spec 5.1).

They prove that the parser only ever raises ``AmbiguousPath``, that what it accepts is free of
every traversal and separator trick, that spelling a path differently (percent-encoding)
never changes what it matches, and that the matcher agrees with a naive reference matcher.
"""

from __future__ import annotations

import re
import string

from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from tether.policy.errors import AmbiguousPath, InvalidRequest, PatternError
from tether.policy.httpmatch import (
    HttpPath,
    PathPattern,
    canonicalize_path,
    method_ok,
    override_methods,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that combine into the nastiest targets: encodings of separators and dots in every
# case, path parameters, controls, broken escapes, non-ASCII bytes, query and fragment marks.
TRICKY_PIECES = [
    "/", "/", "/", ".", "..", "a", "B", "~", "%", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C",
    "%3b", "%3B", "%00", "%0a", "%7f", "%25", "%41", "%C3%A9", "%C0%AE", "%E2%88%95", "%ff",
    "%g1", "%4", "\\", ";", "?", "#", "&", "=", " ", "\x00", "\t", "\x85", "é", "\ud800",
    "%EF%BC%8F", "%20", "*", "{", "}", ":", "@",
]  # fmt: skip

tricky_targets = st.lists(st.sampled_from(TRICKY_PIECES), max_size=16).map("".join)
any_text = st.text(max_size=200)

SAFE_RAW = string.ascii_letters + string.digits + "-._~!$&'()*+,=:@"
# Decoded segment text: raw-safe characters plus some that must be encoded.
segment_text = st.text(
    alphabet=st.sampled_from([*SAFE_RAW, " ", '"', "[", "]", "{", "|", "é", "ü", "中", "€"]),
    min_size=1,
    max_size=8,
)


def encode_char(char: str, upper: bool) -> str:
    return "".join(f"%{byte:02X}" if upper else f"%{byte:02x}" for byte in char.encode())


@st.composite
def spellings(draw: st.DrawFn, segments: list[str]) -> str:
    """One of the many percent-encoded spellings of a path with these decoded segments."""
    parts = []
    for segment in segments:
        chars = []
        for char in segment:
            if char in SAFE_RAW and draw(st.booleans()):
                chars.append(char)
            else:
                chars.append(encode_char(char, draw(st.booleans())))
        parts.append("".join(chars))
    return "/" + "/".join(parts)


@st.composite
def two_spellings(draw: st.DrawFn) -> tuple[list[str], str, str]:
    segments = draw(st.lists(segment_text, min_size=1, max_size=5))
    if draw(st.booleans()):
        segments.append("")  # trailing slash
    return segments, draw(spellings(segments)), draw(spellings(segments))


likely_targets = st.one_of(
    any_text,
    tricky_targets,
    tricky_targets.map(lambda target: "/" + target),
    two_spellings().map(lambda case: case[1]),
    two_spellings().map(lambda case: "/public" + case[1]),
)


def accepted(target: str) -> HttpPath | None:
    try:
        return canonicalize_path(target)
    except AmbiguousPath:
        return None


# --- the parser never crashes ---------------------------------------------------------------


@SETTINGS
@given(st.one_of(any_text, tricky_targets))
def test_canonicalize_raises_only_ambiguous_path(target: str) -> None:
    try:
        result = canonicalize_path(target)
    except AmbiguousPath as error:
        assert error.reason == "ambiguous-path"
        assert error.detail.isascii()
        return
    assert isinstance(result, HttpPath)


@SETTINGS
@given(likely_targets)
def test_accepted_paths_are_clean(target: str) -> None:
    result = accepted(target)
    if result is None:
        return
    assert result.path == target.partition("?")[0]
    assert result.path.startswith("/")
    assert result.query == target.partition("?")[2]
    assert "" not in result.segments[:-1]
    for segment in result.segments:
        assert segment.strip(".") or not segment  # no '.', '..', '...'
        assert not set(segment) & set("/\\;%?#")
        assert all(ord(char) >= 0x20 and not 0x7F <= ord(char) <= 0x9F for char in segment)
    assert not set(result.path) & set("\\;# \x00")
    assert result.path.isascii()


@SETTINGS
@given(likely_targets)
def test_canonicalize_is_deterministic_and_idempotent(target: str) -> None:
    first = accepted(target)
    if first is None:
        return
    again = canonicalize_path(first.path + ("?" + first.query if first.query else ""))
    assert again == first


# --- traversal and encoded separators are always denied -------------------------------------

TRAVERSAL_SEGMENTS = [
    ".", "..", "...", "%2e", "%2E", "%2e%2e", "%2E%2E", "%2e%2E", ".%2e", ".%2E", "%2e.",
    "%2E.", "..;", "..%3b", "..%3B", "..\\", "..%5c",
]  # fmt: skip
ENCODED_SEPARATORS = ["%2f", "%2F", "%5c", "%5C", "\\"]


@st.composite
def paths_with_a_traversal(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.text(SAFE_RAW, min_size=1, max_size=6), max_size=5))
    segments = [seg for seg in segments if seg.strip(".")]
    position = draw(st.integers(0, len(segments)))
    segments.insert(position, draw(st.sampled_from(TRAVERSAL_SEGMENTS)))
    trailing = draw(st.sampled_from(["", "/", "?x=1", "/?q=..%2f"]))
    return "/" + "/".join(segments) + trailing


@st.composite
def paths_with_an_encoded_separator(draw: st.DrawFn) -> str:
    text = draw(st.lists(st.sampled_from([*SAFE_RAW, "/", "%20", "%41"]), max_size=20))
    position = draw(st.integers(0, len(text)))
    text.insert(position, draw(st.sampled_from(ENCODED_SEPARATORS)))
    return "/" + "".join(text) + draw(st.sampled_from(["", "?a=b", "?%2F"]))


@SETTINGS
@given(paths_with_a_traversal())
def test_any_traversal_is_denied(target: str) -> None:
    assert accepted(target) is None


@SETTINGS
@given(paths_with_an_encoded_separator())
def test_any_encoded_separator_is_denied(target: str) -> None:
    assert accepted(target) is None


# --- spelling never changes the decoded path, so it cannot dodge a rule ----------------------


@SETTINGS
@given(two_spellings())
def test_every_spelling_decodes_to_the_same_segments(case: tuple[list[str], str, str]) -> None:
    segments, first, second = case
    one, other = accepted(first), accepted(second)
    if one is None or other is None:
        # A spelling is refused only for what it decodes to (dot segments, Unicode rules),
        # never for the encoding chosen: both spellings are refused together.
        assert one is None
        assert other is None
        return
    assert one.segments == other.segments == tuple(segments)


@SETTINGS
@given(two_spellings())
def test_a_deny_pattern_catches_every_spelling(case: tuple[list[str], str, str]) -> None:
    segments, first, second = case
    one, other = accepted(first), accepted(second)
    assume(one is not None and other is not None)
    assert one is not None and other is not None
    # A literal deny pattern for this path (glob and capture characters have no escape).
    assume(not any(set(segment) & set("*{}") for segment in segments))
    pattern = PathPattern.compile("/" + "/".join(segments))
    assert pattern.match(one) == {}
    assert pattern.match(other) == {}


# --- patterns -------------------------------------------------------------------------------

literal_segment = st.sampled_from(["a", "b", "ab", "A", "é", "a b", "x.y", "1"])


@SETTINGS
@given(st.lists(literal_segment, min_size=1, max_size=5), st.lists(literal_segment, max_size=6))
def test_a_literal_pattern_matches_only_its_own_segments(
    pattern_segments: list[str], path_segments: list[str]
) -> None:
    pattern = PathPattern.compile("/" + "/".join(pattern_segments))
    path = canonicalize_path(
        "/" + "/".join("".join(encode_char(c, True) for c in seg) for seg in path_segments)
    )
    if pattern.match(path) is not None:
        assert path.segments == tuple(pattern_segments)
    else:
        assert path.segments != tuple(pattern_segments)


@SETTINGS
@given(likely_targets)
def test_public_pattern_never_matches_outside_public(target: str) -> None:
    path = accepted(target)
    if path is None:
        return
    public = PathPattern.compile("/public/**")
    if path.segments[0] != "public":
        assert public.match(path) is None
    else:
        assert public.match(path) == {}


@SETTINGS
@given(
    st.lists(st.sampled_from(["public", "..", "%2e%2e", "%2E.", "x", "%2F", ";", ""]), max_size=6)
)
def test_public_pattern_cannot_be_escaped_by_traversal(segments: list[str]) -> None:
    path = accepted("/public/" + "/".join(segments))
    if path is not None:
        assert path.segments[0] == "public"
        assert ".." not in path.segments


def reference_match(pattern: list[str], segments: tuple[str, ...]) -> dict[str, str] | None:
    """A naive backtracking matcher: '**' tries the shortest extent first."""

    def one(part: str, segment: str) -> bool:
        if part == "*" or part.startswith("{"):
            return segment != ""
        if "*" in part:
            regex = ".*".join(re.escape(piece) for piece in part.split("*"))
            return re.fullmatch(regex, segment, re.DOTALL) is not None
        return part == segment

    def walk(i: int, j: int, found: dict[str, str]) -> dict[str, str] | None:
        if i == len(pattern):
            return found if j == len(segments) else None
        if pattern[i] == "**":
            for k in range(j, len(segments) + 1):
                result = walk(i + 1, k, found)
                if result is not None:
                    return result
            return None
        if j == len(segments) or not one(pattern[i], segments[j]):
            return None
        if pattern[i].startswith("{"):
            found = {**found, pattern[i][1:-1]: segments[j]}
        return walk(i + 1, j + 1, found)

    return walk(0, 0, {})


# '**' and captures are over-represented: placement of runs between two '**' is the tricky part.
pattern_part = st.sampled_from(
    ["a", "b", "ab", "*", "**", "**", "**", "a*", "*b", "a*b", "{x}", "{y}", "{z}", "{w}"]
)
path_part = st.sampled_from(["a", "b", "ab", "aab", "ba", "c"])


@SETTINGS
@given(
    st.lists(pattern_part, min_size=1, max_size=7),
    st.booleans(),
    st.lists(path_part, max_size=9),
    st.booleans(),
)
def test_matcher_agrees_with_reference(
    parts: list[str], pattern_slash: bool, path_parts: list[str], path_slash: bool
) -> None:
    source = "/" + "/".join(parts) + ("/" if pattern_slash else "")
    try:
        pattern = PathPattern.compile(source)
    except PatternError:
        reject()
    target = "/" + "/".join(path_parts) + ("/" if path_slash and path_parts else "")
    path = canonicalize_path(target)
    assert pattern.match(path) == reference_match(source[1:].split("/"), path.segments)


run_part = st.sampled_from(["a", "b", "*", "{x}", "{y}", "a*"])


@SETTINGS
@given(
    st.lists(st.lists(run_part, min_size=1, max_size=2), min_size=2, max_size=3),
    st.booleans(),
    st.lists(st.sampled_from(["a", "b", "ab"]), min_size=2, max_size=9),
)
def test_runs_between_double_stars_agree_with_reference(
    runs: list[list[str]], anchored: bool, path_parts: list[str]
) -> None:
    parts = [part for run in runs for part in ("**", *run)]
    source = "/" + "/".join(parts[1:] if anchored else parts)
    try:
        pattern = PathPattern.compile(source)
    except PatternError:
        reject()
    path = canonicalize_path("/" + "/".join(path_parts))
    assert pattern.match(path) == reference_match(source[1:].split("/"), path.segments)


@SETTINGS
@given(st.one_of(any_text, tricky_targets.map(lambda t: "/" + t)))
def test_compile_raises_only_pattern_error(source: str) -> None:
    try:
        pattern = PathPattern.compile(source)
    except PatternError:
        return
    assert pattern.source == source
    for target in ("/", "/a/b", "/a/b/", "/x%20y/%C3%A9"):
        result = pattern.match(canonicalize_path(target))
        assert result is None or isinstance(result, dict)


# --- methods --------------------------------------------------------------------------------


@SETTINGS
@given(st.dictionaries(st.sampled_from(["X-HTTP-Method", "x_method_override", "Accept"]), any_text))
def test_override_methods_raises_only_invalid_request(headers: dict[str, str]) -> None:
    try:
        methods = override_methods(headers)
    except InvalidRequest:
        return
    for method in methods:
        assert method_ok(method)
        assert method.upper() in methods


@SETTINGS
@given(any_text)
def test_method_ok_is_the_token_grammar(method: str) -> None:
    token = set(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
    assert method_ok(method) == (0 < len(method) <= 64 and set(method) <= token)
