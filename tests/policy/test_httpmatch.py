"""Conformance tests for HTTP paths, path patterns and methods (spec 5.1)."""

from __future__ import annotations

import re

import pytest

from tether.policy.errors import AmbiguousPath, InvalidRequest, PatternError
from tether.policy.httpmatch import (
    MAX_TARGET,
    OVERRIDE_HEADERS,
    HttpPath,
    PathPattern,
    canonicalize_path,
    method_ok,
    methods_match,
    override_methods,
)

# --- canonical form: accepted ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "segments", "query"),
    [
        ("/", "/", ("",), ""),
        ("/v1/invoices/7?expand=lines", "/v1/invoices/7", ("v1", "invoices", "7"), "expand=lines"),
        ("/a/b/", "/a/b/", ("a", "b", ""), ""),
        ("/files/a%20b", "/files/a%20b", ("files", "a b"), ""),
        ("/%41dmin", "/%41dmin", ("Admin",), ""),
        ("/caf%C3%A9", "/caf%C3%A9", ("café",), ""),
        ("/caf%c3%a9/", "/caf%c3%a9/", ("café", ""), ""),
        ("/a.b/..c/c../.d", "/a.b/..c/c../.d", ("a.b", "..c", "c..", ".d"), ""),
        ("/~u/!$&'()*+,=:@", "/~u/!$&'()*+,=:@", ("~u", "!$&'()*+,=:@"), ""),
        ("/a?b?c", "/a", ("a",), "b?c"),
        ("/a?", "/a", ("a",), ""),
        ("/a?x=%00&y=%0A", "/a", ("a",), "x=%00&y=%0A"),
        ("/a?q=[1]|{2}\\", "/a", ("a",), "q=[1]|{2}\\"),
        ("/%7Bx%7D%5B%5D%22", "/%7Bx%7D%5B%5D%22", ('{x}[]"',), ""),
    ],
)
def test_canonical_paths_are_accepted(
    target: str, path: str, segments: tuple[str, ...], query: str
) -> None:
    assert canonicalize_path(target) == HttpPath(path, segments, query)


def test_the_path_is_kept_exactly_as_received() -> None:
    # The broker forwards ``path``: it must not be re-encoded or normalised.
    assert canonicalize_path("/A%2d%2D/b?z").path == "/A%2d%2D/b"


def test_a_target_of_the_maximum_length_is_accepted() -> None:
    target = "/" + "a" * (MAX_TARGET - 1)
    assert canonicalize_path(target).segments == ("a" * (MAX_TARGET - 1),)


# --- canonical form: every bypass of 5.1 is denied ------------------------------------------

TRAVERSALS = [
    "/v1/../admin",
    "/v1/./admin",
    "/..",
    "/.",
    "/v1/..",
    "/v1/../",
    "/v1/%2e%2e/admin",
    "/v1/%2E%2E/admin",
    "/v1/%2E%2e/admin",
    "/v1/.%2E/admin",
    "/v1/%2e./admin",
    "/v1/%2e/admin",
    "/v1/.../admin",
    "/v1/%2e%2e%2e/admin",
]
ENCODED_SEPARATORS = [
    "/v1%2Fadmin",
    "/v1%2fadmin",
    "/v1/..%2Fadmin",
    "/v1%5Cadmin",
    "/v1%5cadmin",
    "/v1/..%5c..%5cadmin",
    "/v1\\admin",
    "/v1/..\\admin",
]
PATH_PARAMETERS = [
    "/v1/..;/admin",
    "/v1/admin;jsessionid=1",
    "/v1;/admin",
    "/;/admin",
    "/v1/%3B/admin",
    "/v1/..%3b/admin",
]
EMPTY_SEGMENTS = ["//admin", "/v1//admin", "/v1/admin//", "///", "//"]
CONTROLS = [
    "/v1/%00",
    "/v1/a%00.json",
    "/v1/a\x00",
    "/v1/%0a",
    "/v1/%0D%0A",
    "/v1/%7F",
    "/v1/%7f",
    "/v1/a\tb",
    "/v1/a\nb",
    "/v1/a\x7f",
    "/v1/%1f",
    "/v1/%C2%85",  # C1 control NEL, encoded as UTF-8
    "/v1/a\x85",
]
INVALID_PERCENT = [
    "/v1/%G1",
    "/v1/%4",
    "/v1/%",
    "/v1/a%",
    "/v1/%%41",
    "/v1/%4g",
    "/v1/%-1",
    "/v1/%+1",
    "/v1/%_1",
    "/v1/%\u0661\u0661",  # Arabic-Indic digits are digits to int(), not hex to HTTP
]
NOT_UTF8 = ["/v1/%FF", "/v1/%C0%AE", "/v1/%C0%AE%C0%AE", "/v1/%ED%A0%80", "/v1/%C3", "/v1/%80"]
FRAGMENTS = ["/v1/a#b", "/v1/a?x=1#b", "#", "/#", "/v1/a%23b"]
NOT_ABSOLUTE = ["", "v1/a", "*", "http://host/a", "?x=1", "../a", "%2Fa"]
RFC3986_RAW = ["/a b", '/a"b', "/a<b", "/a>b", "/a|b", "/a{b}", "/a^b", "/a`b", "/a[0]", "/é"]
DOUBLE_ENCODING_AND_DELIMITERS = ["/%25", "/%252e%252e/admin", "/a%252F", "/admin%3F/x", "/%3f"]
UNICODE_TRICKS = [
    "/%EF%BC%8E%EF%BC%8E/admin",  # full-width '..'
    "/v1%EF%BC%8Fadmin",  # full-width '/'
    "/v1%E2%88%95admin",  # division slash
    "/v1%C2%A5admin",  # yen sign ('\' in best-fit code pages)
    "/%EF%BD%81dmin",  # full-width 'a'
    "/cafe%CC%81",  # decomposed (NFD) 'é'
    "/%E2%80%8Badmin",  # zero-width space
    "/%EF%BB%BFadmin",  # byte order mark
    "/%E2%80%AEnimda",  # right-to-left override
    "/%EE%80%80",  # private use
]
QUERY_PROBLEMS = ["/a?x=1 2", "/a?x=%zz", "/a?x=%", "/a?x=\x00", "/a?x=\x7f", "/a?é", "/a?x=\t"]

DENIED = [
    *TRAVERSALS,
    *ENCODED_SEPARATORS,
    *PATH_PARAMETERS,
    *EMPTY_SEGMENTS,
    *CONTROLS,
    *INVALID_PERCENT,
    *NOT_UTF8,
    *FRAGMENTS,
    *NOT_ABSOLUTE,
    *RFC3986_RAW,
    *DOUBLE_ENCODING_AND_DELIMITERS,
    *UNICODE_TRICKS,
    *QUERY_PROBLEMS,
    "/" + "a" * MAX_TARGET,
    "/a?" + "b" * MAX_TARGET,
]


@pytest.mark.parametrize("target", DENIED)
def test_non_canonical_targets_are_denied_as_ambiguous_path(target: str) -> None:
    with pytest.raises(AmbiguousPath) as caught:
        canonicalize_path(target)
    assert caught.value.reason == "ambiguous-path"
    assert caught.value.detail


@pytest.mark.parametrize("target", ["/a\x00" + "x" * 1000, "/\x1b[31m%00", "/a/" + "é" * 500])
def test_error_details_are_short_and_ascii(target: str) -> None:
    with pytest.raises(AmbiguousPath) as caught:
        canonicalize_path(target)
    detail = caught.value.detail
    assert detail.isascii()
    assert detail.isprintable()
    assert len(detail) < 300


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("/v1/%2e%2e/x", "'..'"),
        ("/v1%2Fx", "'/'"),
        ("/a%5C", "'\\'"),
        ("/a\\b", "'\\'"),
        ("/a;b", "';'"),
        ("/a%3Bb", "';'"),
        ("//a", "empty segment"),
        ("/a%00", "control"),
        ("/a%G0", "percent-encoding"),
        ("/a%FF", "UTF-8"),
        ("/a#b", "fragment"),
        ("a", "start with '/'"),
        ("/%25", "double encoding"),
    ],
)
def test_error_details_name_the_problem(target: str, words: str) -> None:
    with pytest.raises(AmbiguousPath, match=re.escape(words)):
        canonicalize_path(target)


# --- patterns -------------------------------------------------------------------------------


def match(pattern: str, target: str) -> dict[str, str] | None:
    return PathPattern.compile(pattern).match(canonicalize_path(target))


@pytest.mark.parametrize(
    ("pattern", "target", "expected"),
    [
        # the spec's examples
        ("/v1/invoices/{id}", "/v1/invoices/7?expand=lines", {"id": "7"}),
        ("/v1/invoices/{id}", "/v1/invoices/7/lines", None),
        ("/v1/invoices/{id}", "/v1/invoices/", None),
        ("/v1/invoices/{id}", "/v1/invoices", None),
        ("/v1/customers/*/invoices/**", "/v1/customers/42/invoices/2024/07", {}),
        ("/v1/customers/*/invoices/**", "/v1/customers/42/invoices", {}),
        ("/v1/customers/*/invoices/**", "/v1/customers/42/invoices/", {}),
        ("/v1/customers/*/invoices/**", "/v1/customers/invoices", None),
        ("/v1/customers/*/invoices/**", "/v1/customers/4/2/invoices", None),
        ("/v1/customers/*/invoices/**", "/v1/customers/42/invoicesX", None),
        # literals: exact, case-sensitive, against the decoded segment
        ("/v1/Admin", "/v1/Admin", {}),
        ("/v1/Admin", "/v1/admin", None),
        ("/v1/admin", "/v1/%61dmin", {}),
        ("/v1/admin", "/v1/%41dmin", None),
        ("/files/a b", "/files/a%20b", {}),
        ("/files/café", "/files/caf%C3%A9", {}),
        ("/files/a+b", "/files/a+b", {}),
        ("/files/a+b", "/files/a%20b", None),
        # '*' is one non-empty segment; '{name}' captures the decoded value
        ("/a/*", "/a/b", {}),
        ("/a/*", "/a/", None),
        ("/a/*", "/a", None),
        ("/a/*", "/a/b/c", None),
        ("/a/{id}", "/a/x%20y", {"id": "x y"}),
        ("/{a}/{b}", "/1/2", {"a": "1", "b": "2"}),
        # '*' within a segment
        ("/v1/inv-*", "/v1/inv-2024", {}),
        ("/v1/inv-*", "/v1/inv-", {}),
        ("/v1/inv-*", "/v1/INV-2024", None),
        ("/v1/inv-*", "/v1/xinv-2024", None),
        ("/v1/inv-*", "/v1/inv-2024/x", None),
        ("/v1/*.json", "/v1/a.json", {}),
        ("/v1/*.json", "/v1/a.jsonx", None),
        ("/v1/a*b*c", "/v1/abc", {}),
        ("/v1/a*b*c", "/v1/a-b-c", {}),
        ("/v1/a*b*c", "/v1/a-c", None),
        # '**' is zero or more segments
        ("/public/**", "/public", {}),
        ("/public/**", "/public/", {}),
        ("/public/**", "/public/a/b/c/", {}),
        ("/public/**", "/publicity", None),
        ("/public/**", "/", None),
        ("/**", "/", {}),
        ("/**", "/a/b", {}),
        ("/**/x", "/x", {}),
        ("/**/x", "/a/b/x", {}),
        ("/**/x", "/a/b/x/", None),
        ("/**/x/", "/a/b/x/", {}),
        ("/a/**/b", "/a/b", {}),
        ("/a/**/b", "/a/1/2/b", {}),
        ("/a/**/b", "/a/1/2/c", None),
        ("/a/**/{id}", "/a/1/2/3", {"id": "3"}),
        ("/a/**/{id}", "/a/1/2/", None),
        ("/**/{x}/**/{y}", "/1/2/3/4", {"x": "1", "y": "4"}),
        ("/**/k/{v}/**", "/a/k/1/b/k/2", {"v": "1"}),  # leftmost placement
        ("/**/a/**/b/**/c", "/c/b/a/c", None),
        ("/**/a/**/b/**/c", "/a/c/b/a/b/c", {}),
        ("/**/**", "/x", {}),
        # trailing slash is part of the path
        ("/a/b/", "/a/b/", {}),
        ("/a/b/", "/a/b", None),
        ("/a/b", "/a/b/", None),
        ("/a/*/", "/a/b/", {}),
        ("/a/*", "/a/b/", None),
        ("/a/{id}/", "/a/7/", {"id": "7"}),
        # the root
        ("/", "/", {}),
        ("/", "/a", None),
        ("/*", "/", None),
        ("/{x}", "/", None),
    ],
)
def test_pattern_semantics(pattern: str, target: str, expected: dict[str, str] | None) -> None:
    assert match(pattern, target) == expected


def test_match_returns_a_fresh_dict_each_time() -> None:
    pattern = PathPattern.compile("/a/{id}")
    path = canonicalize_path("/a/1")
    first = pattern.match(path)
    assert first == {"id": "1"}
    first["id"] = "tampered"
    assert pattern.match(path) == {"id": "1"}


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("/v1/invoices/{id}", ("v1", "invoices")),
        ("/v1/customers/*/invoices/**", ("v1", "customers")),
        ("/v1/inv-*", ("v1",)),
        ("/**", ()),
        ("/a/b", ("a", "b")),
        ("/a/b/", ("a", "b", "")),
        ("/", ("",)),
        ("/files/a b", ("files", "a b")),
    ],
)
def test_literal_prefix(pattern: str, prefix: tuple[str, ...]) -> None:
    assert PathPattern.compile(pattern).literal_prefix == prefix


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "v1/a",
        "*",
        "**",
        "/a//b",
        "//",
        "//a",
        "/a**",
        "/**b",
        "/a/**x/b",
        "/a/***",
        "/{id",
        "/id}",
        "/x{id}",
        "/{id}x",
        "/{}",
        "/{1a}",
        "/{a-b}",
        "/{a b}",
        "/{id}/{id}",
        "/{a}/**/{a}",
        "/a;b",
        "/..;",
        "/a%20b",
        "/a%2F",
        "/a?x=1",
        "/a#x",
        "/a\\b",
        "/a\x00",
        "/a\nb",
        "/..",
        "/.",
        "/...",
        "/a/../b",
        "/cafe\u0301",
        "/\uff0e\uff0e",
        "/a\u2215b",
        "/a\u200bb*",
        "/" + "a" * (MAX_TARGET + 1),
    ],
)
def test_bad_patterns_do_not_compile(pattern: str) -> None:
    with pytest.raises(PatternError):
        PathPattern.compile(pattern)


def test_pattern_errors_are_value_errors_naming_the_pattern() -> None:
    with pytest.raises(ValueError, match="a%20b"):
        PathPattern.compile("/files/a%20b")


def test_patterns_compare_by_source() -> None:
    assert PathPattern.compile("/a/*") == PathPattern.compile("/a/*")
    assert hash(PathPattern.compile("/a/*")) == hash(PathPattern.compile("/a/*"))
    assert PathPattern.compile("/a/*") != PathPattern.compile("/a/{x}")


def test_patterns_are_frozen() -> None:
    pattern = PathPattern.compile("/a")
    with pytest.raises(AttributeError):
        pattern.source = "/b"  # type: ignore[misc]


# --- methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "M-SEARCH", "get", "X_1!#$%&'*+.^`|~"])
def test_method_tokens(method: str) -> None:
    assert method_ok(method)


@pytest.mark.parametrize(
    "method", ["", "GE T", "GET\r\n", "GET\n", "G\x00T", "GÉT", "GET/1", "(GET)", "a" * 65, "{}"]
)
def test_invalid_method_tokens(method: str) -> None:
    assert not method_ok(method)


def test_method_token_length_limit() -> None:
    assert method_ok("A" * 64)
    assert not method_ok("A" * 65)


@pytest.mark.parametrize(
    ("allowed", "method", "expected"),
    [
        ({"GET"}, "GET", True),
        ({"GET", "HEAD"}, "HEAD", True),
        ({"GET"}, "get", False),
        ({"get"}, "GET", False),
        ({"GET"}, "POST", False),
        ({"*"}, "DELETE", True),
        ({"*"}, "get", True),
        (set(), "GET", False),
        ({"GET"}, "*", False),
    ],
)
def test_methods_match(allowed: set[str], method: str, expected: bool) -> None:
    assert methods_match(frozenset(allowed), method) is expected


def test_override_header_names() -> None:
    assert {"x-http-method-override", "x-http-method", "x-method-override"} == OVERRIDE_HEADERS


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, ()),
        ({"accept": "application/json", "x-http-method-overrides": "DELETE"}, ()),
        ({"X-HTTP-Method-Override": "DELETE"}, ("DELETE",)),
        ({"x-http-method-override": "DELETE"}, ("DELETE",)),
        ({"X-HTTP-METHOD": "PUT"}, ("PUT",)),
        ({"x-Method-OVERRIDE": "PATCH"}, ("PATCH",)),
        ({"X_HTTP_Method_Override": "DELETE"}, ("DELETE",)),
        ({" X-HTTP-Method ": "DELETE"}, ("DELETE",)),
        ({"X-HTTP-Method": " DELETE\t"}, ("DELETE",)),
        ({"X-HTTP-Method": "delete"}, ("delete", "DELETE")),
        ({"X-HTTP-Method": "PUT", "x-http-method": "DELETE"}, ("PUT", "DELETE")),
        ({"X-HTTP-Method": "PUT", "X-Method-Override": "PUT"}, ("PUT",)),
    ],
)
def test_override_methods(headers: dict[str, str], expected: tuple[str, ...]) -> None:
    assert override_methods(headers) == expected


@pytest.mark.parametrize("value", ["", "   ", "GET, DELETE", "DELETE\r\nX: y", "DÉLETE", "a" * 65])
def test_override_values_that_are_not_methods_are_invalid_requests(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        override_methods({"X-HTTP-Method-Override": value})
    assert caught.value.reason == "invalid-request"


def test_an_override_is_checked_like_the_method() -> None:
    # GET-only rule; the override asks for DELETE, in lower case: neither form is allowed.
    allowed = frozenset({"GET"})
    overrides = override_methods({"x-http-method-override": "delete"})
    assert methods_match(allowed, "GET")
    assert not any(methods_match(allowed, method) for method in overrides)
    # A deny rule on DELETE catches the lower-case spelling through its upper-cased form.
    assert any(methods_match(frozenset({"DELETE"}), method) for method in overrides)
