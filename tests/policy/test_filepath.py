"""Canonical form of file paths (spec 5.5) and the shared Unicode rules."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tether.policy.errors import AmbiguousPath
from tether.policy.filepath import MAX_FILE_PATH, canonical_file_path, unicode_problem

SETTINGS = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc/passwd",
        "/srv/data/report 2024.txt",
        "/home/bot/.ssh/authorized_keys",
        "/a/b..c/..d/e..",
        "/a;b/c%2e%2e",  # no decoding for files: '%' and ';' are plain characters
        "/home/café/résumé.pdf",
        "/data/中文/файл",
        "/" + "a" * (MAX_FILE_PATH - 1),
    ],
)
def test_canonical_file_paths_are_returned_unchanged(path: str) -> None:
    assert canonical_file_path(path) is path


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("", "not absolute"),
        ("etc/passwd", "not absolute"),
        ("./etc", "not absolute"),
        ("~/x", "not absolute"),
        ("//etc/passwd", "empty segment"),
        ("/etc//passwd", "empty segment"),
        ("/etc/", "ends with '/'"),
        ("/etc/ssh/", "ends with '/'"),
        ("/etc/.", "'.'"),
        ("/etc/..", "'..'"),
        ("/etc/../shadow", "'..'"),
        ("/./etc", "'.'"),
        ("/srv/.../x", "'...'"),
        ("/a\x00b", "control"),
        ("/a\nb", "control"),
        ("/a\tb", "control"),
        ("/a\x7f", "control"),
        ("/a\x85", "control"),
        ("/a\\..\\etc", "backslash"),
        ("/a/\udcff", "U+DCFF (Unicode category Cs)"),
        ("/" + "a" * MAX_FILE_PATH, "longer"),
        ("/cafe\u0301", "NFKC"),
        ("/\uff0e\uff0e/etc", "NFKC"),
        ("/a\uff0fb", "NFKC"),
        ("/a\u2215b", "look-alike"),
        ("/a\u00a5b", "look-alike"),
        ("/a\u200bb", "U+200B (Unicode category Cf)"),
        ("/a\u202eb", "U+202E"),
        ("/a\ue000", "U+E000 (Unicode category Co)"),
        ("/a\u2028b", "U+2028 (Unicode category Zl)"),
    ],
)
def test_non_canonical_file_paths_are_ambiguous(path: str, words: str) -> None:
    with pytest.raises(AmbiguousPath, match=re.escape(words)) as caught:
        canonical_file_path(path)
    assert caught.value.reason == "ambiguous-path"
    assert caught.value.detail.isascii()


@pytest.mark.parametrize("text", ["", "abc", "a b", "café", "中文", "ß", "\u00e9t\u00e9"])
def test_unicode_problem_accepts_ordinary_text(text: str) -> None:
    assert unicode_problem(text) is None


@pytest.mark.parametrize(
    "text",
    ["\u0085", "\u00ad", "\ufeff", "\u200d", "\ud800", "\U000f0000", "\u0378", "\u2029", "\uff41"],
)
def test_unicode_problem_names_unsafe_text(text: str) -> None:
    problem = unicode_problem("x" + text)
    assert problem is not None
    assert problem.isascii()


# --- properties -----------------------------------------------------------------------------

PIECES = ["/", "/", "/", ".", "..", "a", "b", "\\", "\x00", "\n", "é", "\udcff", " ", "%2e", "~"]
file_paths = st.one_of(st.text(max_size=100), st.lists(st.sampled_from(PIECES)).map("".join))


@SETTINGS
@given(file_paths)
def test_only_ambiguous_path_is_raised_and_accepted_paths_are_clean(path: str) -> None:
    try:
        result = canonical_file_path(path)
    except AmbiguousPath as error:
        assert error.detail.isascii()
        return
    assert result == path
    assert path.startswith("/")
    if path != "/":
        for segment in path[1:].split("/"):
            assert segment
            assert segment.strip(".")
    assert "\\" not in path
    assert all(ord(char) >= 0x20 and not 0x7F <= ord(char) <= 0x9F for char in path)
    path.encode("utf-8")  # no lone surrogates


segment = st.text(string.ascii_letters + string.digits + "._- ", min_size=1, max_size=8).filter(
    lambda s: s.strip(".") != ""
)


@SETTINGS
@given(
    st.lists(segment, max_size=4),
    st.sampled_from([".", "..", "...", ""]),
    st.lists(segment, max_size=4),
)
def test_a_dot_or_empty_segment_anywhere_is_denied(
    before: list[str], bad: str, after: list[str]
) -> None:
    assume(bad or before or after)  # "/" alone is the root, which is canonical
    with pytest.raises(AmbiguousPath):
        canonical_file_path("/" + "/".join([*before, bad, *after]))


@SETTINGS
@given(st.lists(segment, min_size=1, max_size=6))
def test_clean_segments_are_accepted(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    assert canonical_file_path(path) == path
