"""Adversarial review of HTTP matching (spec 5.1): path-override headers, trailing slashes.

``X-Original-URL`` / ``X-Rewrite-URL`` make IIS URL Rewrite and older Symfony and Zend
applications route a request to the path they name. Before the fix the engine ignored them:
``GET /public/x`` with ``X-Original-URL: /admin/delete`` was allowed by a rule for
``/public/**`` next to a deny rule for ``/admin/**``, and the broker forwarded the header.

A ``POST /x?_method=DELETE`` (Symfony, Laravel and Express's ``method-override`` read the query
parameter as the method) was allowed next to a deny rule on ``DELETE``.

A deny rule on ``/admin/**`` did not match ``/Admin/x``, which Express (by default), ASP.NET
Core and IIS route to the same handler.

A deny rule on ``/admin/users`` did not match ``/admin/users/``, which Spring (before 6),
Express and others route to the same handler: a broad allow rule let it through.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy.actions import compile_http, part_keys
from tether.policy.errors import AmbiguousPath, PatternError
from tether.policy.httpmatch import canonicalize_path, override_paths
from tether.policy.request import HttpPart

from .conftest import http_request, policies

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WEB = policies(
    """
    rules:
      - id: public
        effect: allow
        http: {methods: ["*"], paths: ["/public/**"]}
      - id: reports
        effect: allow
        http: {methods: [GET], paths: ["/reports/*"]}
      - id: no-admin
        effect: deny
        http: {methods: ["*"], paths: ["/admin/**"]}
    """
)


def decide(path: str, method: str = "GET", **headers: str) -> tuple[str, str | None, str]:
    d = WEB.decide(http_request(path, method, headers=headers))
    return d.decision, d.rule, d.reason


@pytest.mark.parametrize(
    "name", ["X-Original-URL", "x-rewrite-url", "X_ORIGINAL_URL", " x-original-url "]
)
def test_a_path_override_header_meets_the_deny_rules(name: str) -> None:
    assert decide("/public/x", **{name: "/admin/delete"}) == ("deny", "no-admin", "denied-by-rule")


def test_the_overriding_path_must_be_allowed_too() -> None:
    assert decide("/public/x", **{"X-Original-URL": "/internal"})[2] == "default-deny"
    assert decide("/public/x", **{"X-Original-URL": "/public/y?z=1"}) == (
        "allow",
        "public",
        "allowed",
    )
    # with every method of the request, override headers included
    headers = {"X-Original-URL": "/reports/q3", "X-HTTP-Method-Override": "DELETE"}
    assert decide("/public/x", "POST", **headers)[2] == "default-deny"
    assert decide("/public/x", **{"X-Original-URL": "/reports/q3"})[0] == "allow"


@pytest.mark.parametrize(
    "target", ["/public/../admin", "http://host/admin", "admin", "/public//x", "/a, /b", ""]
)
def test_an_overriding_path_out_of_canonical_form_is_ambiguous(target: str) -> None:
    assert decide("/public/x", **{"X-Rewrite-URL": target})[2] == "ambiguous-path"


def test_other_headers_do_not_add_paths() -> None:
    assert override_paths({"X-Original-Host": "/admin", "Referer": "/admin/x"}) == ()


TARGETS = st.sampled_from(["/public/a", "/public/b/c", "/admin/x", "/admin", "/reports/q", "/z"])
NAMES = st.sampled_from(["X-Original-URL", "x-original-url", "X_Rewrite_URL", "X-Rewrite-Url"])


@SETTINGS
@given(TARGETS, st.dictionaries(NAMES, TARGETS, max_size=3))
def test_allowed_only_when_every_path_is_allowed(path: str, headers: dict[str, str]) -> None:
    decision = WEB.decide(http_request(path, "GET", headers=headers)).decision
    paths = {path, *headers.values()}
    expected = all(p.startswith(("/public/", "/reports/")) for p in paths)
    assert (decision == "allow") == expected, (path, headers)


SLASH = policies(
    """
    rules:
      - id: web
        effect: allow
        http: {methods: ["*"], paths: ["/**"]}
      - id: exact
        effect: allow
        agents: [strict]
        http: {methods: [GET], paths: ["/reports/{id}"]}
      - id: no-users
        effect: deny
        http: {methods: ["*"], paths: ["/admin/users", "/orgs/*/members", "/v1/{id}/keys"]}
    """
)


@pytest.mark.parametrize("path", ["/admin/users/", "/orgs/acme/members/", "/v1/7/keys/?x=1"])
def test_a_deny_rule_also_matches_the_path_with_a_trailing_slash(path: str) -> None:
    d = SLASH.decide(http_request(path))
    assert (d.decision, d.rule) == ("deny", "no-users")


def test_allow_rules_match_only_what_was_written() -> None:
    assert SLASH.decide(http_request("/reports/7", agent="strict")).rule in ("web", "exact")
    strict = policies(
        "rules:\n  - id: exact\n    effect: allow\n"
        "    http: {methods: [GET], paths: ['/reports/{id}']}\n"
    )
    assert strict.decide(http_request("/reports/7")).decision == "allow"
    assert strict.decide(http_request("/reports/7/")).decision == "deny"
    assert SLASH.decide(http_request("/admin/users2/")).decision == "allow"
    assert SLASH.decide(http_request("/")).decision == "allow"


DENIED = st.sampled_from(["/admin/users", "/orgs/{}/members", "/v1/{}/keys"])


@SETTINGS
@given(DENIED, st.text(alphabet="abz019-_.~", min_size=1, max_size=6), st.booleans())
def test_no_trailing_slash_spelling_of_a_denied_path_is_allowed(
    template: str, segment: str, slash: bool
) -> None:
    if segment.strip(".") == "":
        segment = "x" + segment  # a dot-only segment is ambiguous anyway
    path = template.format(segment) + ("/" if slash else "")
    assert SLASH.decide(http_request(path)).decision == "deny", path


METHODS = policies(
    """
    rules:
      - id: web
        effect: allow
        http: {methods: [GET, POST], paths: ["/**"]}
      - id: no-delete
        effect: deny
        http: {methods: [DELETE], paths: ["/**"]}
    """
)


@pytest.mark.parametrize(
    "query",
    ["_method=DELETE", "a=1&_method=DELETE", "%5Fmethod=DELETE", "_METHOD=DELETE",
     "_m%65thod=DELETE", "_method+=DELETE", "_method=delete", "_method=PUT"],
)  # fmt: skip
def test_a_method_override_parameter_must_name_an_allowed_method(query: str) -> None:
    assert METHODS.decide(http_request(f"/x?{query}", "POST")).decision == "deny"


@pytest.mark.parametrize("query", ["", "?_method=GET", "?method=DELETE", "?a=%41&b=method"])
def test_other_queries_add_no_method(query: str) -> None:
    assert METHODS.decide(http_request(f"/x{query}", "POST")).decision == "allow"


def test_a_method_override_parameter_that_names_no_method_is_invalid() -> None:
    d = METHODS.decide(http_request("/x?_method=DEL%20ETE", "POST"))
    assert (d.decision, d.reason) == ("deny", "invalid-request")


QUERY_PARTS = st.sampled_from(
    ["_method=DELETE", "_method=GET", "%5fmethod=DELETE", "a=1", "method=DELETE", "_Method=delete"]
)


@SETTINGS
@given(st.lists(QUERY_PARTS, max_size=4), st.sampled_from(["GET", "POST"]))
def test_allowed_only_when_every_named_method_is_allowed(parts: list[str], method: str) -> None:
    query = "&".join(parts)
    decision = METHODS.decide(http_request("/x" + ("?" + query if query else ""), method))
    named = {p.partition("=")[2] for p in parts if "method=" in p.lower() and p[0] in "_%"}
    assert (decision.decision == "allow") == (named <= {"GET"}), query


CASES = policies(
    """
    rules:
      - id: web
        effect: allow
        http: {methods: ["*"], paths: ["/**"]}
      - id: exact
        effect: allow
        agents: [strict]
        http: {methods: [GET], paths: ["/Reports/{id}"]}
      - id: no-admin
        effect: deny
        http: {methods: ["*"], paths: ["/admin/**", "/v1/Users/{ID}/keys"]}
    """
)


@pytest.mark.parametrize(
    "path", ["/Admin/x", "/ADMIN", "/aDmIn/", "/v1/users/7/KEYS", "/V1/USERS/7/keys/"]
)
def test_a_deny_rule_matches_the_path_in_any_case(path: str) -> None:
    d = CASES.decide(http_request(path))
    assert (d.decision, d.rule) == ("deny", "no-admin")


def test_allow_rules_stay_case_sensitive() -> None:
    assert CASES.decide(http_request("/Reports/7", agent="strict")).decision == "allow"
    strict = policies(
        "rules:\n  - id: exact\n    effect: allow\n"
        "    http: {methods: [GET], paths: ['/Reports/{id}']}\n"
    )
    assert strict.decide(http_request("/reports/7")).decision == "deny"
    assert CASES.decide(http_request("/adminx")).decision == "allow"


@SETTINGS
@given(
    st.sampled_from(["/admin", "/admin/x/y", "/v1/users/12/keys", "/v1/Users/a/keys"]),
    st.lists(st.booleans(), min_size=20, max_size=20),
    st.booleans(),
)
def test_no_case_spelling_of_a_denied_path_is_allowed(
    path: str, upper: list[bool], slash: bool
) -> None:
    spelled = "".join(c.upper() if u else c for c, u in zip(path, upper[: len(path)], strict=True))
    spelled += "/" if slash else ""
    assert CASES.decide(http_request(spelled)).decision == "deny", spelled


SEGMENTS = st.sampled_from(["a", "A", "v1", "V1", "*", "**", "{id}", "Inv-*", "x"])


@SETTINGS
@given(
    st.lists(st.lists(SEGMENTS, min_size=1, max_size=4), min_size=1, max_size=3),
    st.lists(st.sampled_from(["a", "A", "v1", "V1", "inv-1", "INV-1", "", "x", "X"]), max_size=5),
)
def test_deny_keys_cover_every_match(patterns: list[list[str]], path: list[str]) -> None:
    """The index never skips a deny rule that matches another case or a trailing slash."""
    sources = ["/" + "/".join(p) for p in patterns]
    try:
        block = compile_http({"methods": ["*"], "paths": sources}, True)
        part = HttpPart("GET", canonicalize_path("/" + "/".join(path)))
    except (PatternError, AmbiguousPath):
        return
    keys = block.keys()
    if block.match(part) is not None and keys is not None:
        assert set(part_keys(part)) & keys
