"""Adversarial review of HTTP matching (spec 5.1): path-override headers, method parameters.

``X-Original-URL`` / ``X-Rewrite-URL`` make IIS URL Rewrite and older Symfony and Zend
applications route a request to the path they name. Before the fix the engine ignored them:
``GET /public/x`` with ``X-Original-URL: /admin/delete`` was allowed by a rule for
``/public/**`` next to a deny rule for ``/admin/**``, and the broker forwarded the header.

A ``POST /x?_method=DELETE`` (Symfony, Laravel and Express's ``method-override`` read the query
parameter as the method) was allowed next to a deny rule on ``DELETE``.

Not changed, by the contract: a deny rule on ``/admin/**`` does not match ``/Admin/x``, nor one
on ``/admin/users`` ``/admin/users/`` (spec 5.1: literal segments match exactly, case-sensitively,
and a trailing ``/`` is part of the path), though Express, ASP.NET Core and IIS route some of
these to the same handler (docs/policy-language.md says what to write for such a target).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.policy.httpmatch import override_paths

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


SPELLINGS = policies(
    """
    rules:
      - id: web
        effect: allow
        http: {methods: ["*"], paths: ["/**"]}
      - id: no-users
        effect: deny
        http: {methods: ["*"], paths: ["/admin/users", "/admin/**"]}
    """
)


@pytest.mark.parametrize("path", ["/admin/users/x", "/admin/users", "/admin/"])
def test_deny_rules_match_as_written(path: str) -> None:
    assert SPELLINGS.decide(http_request(path)).decision == "deny"


@pytest.mark.parametrize("path", ["/Admin/users", "/ADMIN/x", "/adminx/"])
def test_another_case_is_another_path(path: str) -> None:
    """Spec 5.1: a literal segment matches itself exactly, case-sensitively, for deny rules
    too (a trailing ``/`` is part of the path: ``/admin/`` above is ``/admin/**``'s)."""
    assert SPELLINGS.decide(http_request(path)).rule == "web"


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


# PHP registers a query parameter with "." and " " in its name as "_" (leading blanks
# dropped): ".method" is $_GET["_method"]; its server also reads a header name's "." as "-".


@pytest.mark.parametrize(
    "query",
    [".method=DELETE", "%2Emethod=DELETE", "+.method=DELETE", "%20.method=DELETE",
     " method=DELETE", "%2eMETHOD=delete"],
)  # fmt: skip
def test_a_php_spelling_of_the_method_parameter_is_found(query: str) -> None:
    assert METHODS.decide(http_request(f"/x?{query}", "POST")).decision == "deny", query


@pytest.mark.parametrize("name", ["X-HTTP-Method.Override", "x.http.method.override"])
def test_a_dotted_method_override_header_is_found(name: str) -> None:
    request = http_request("/x", "POST", headers={name: "DELETE"})
    assert METHODS.decide(request).decision == "deny"


@pytest.mark.parametrize(
    "destination",
    ["/admin/delete", "http://api.example/admin/delete", "https://h:8443/admin/x?y=1"],
)
def test_a_webdav_destination_meets_the_deny_rules(destination: str) -> None:
    assert decide("/public/x", "MOVE", Destination=destination) == (
        "deny", "no-admin", "denied-by-rule"
    )  # fmt: skip
    assert decide("/public/x", "COPY", Destination="/public/y")[0] == "allow"


@SETTINGS
@given(
    st.text(alphabet=" ._%2eE+", max_size=4),
    st.text(alphabet=" ._%2eE+", max_size=4),
    st.sampled_from(["DELETE", "delete", "GET"]),
)
def test_no_spelling_php_reads_as_method_escapes(before: str, after: str, value: str) -> None:
    """Whatever PHP would read as ``_method`` (percent-decoded, leading blanks dropped, "."
    and " " as "_"), a DELETE named there is never allowed."""
    from urllib.parse import unquote_plus

    name = f"{before}method{after}" if before or after else "_method"
    php = unquote_plus(name).lstrip(" ").replace(".", "_").replace(" ", "_").lower()
    decision = METHODS.decide(http_request(f"/x?{name}={value}", "POST"))
    if php == "_method" and value.upper() == "DELETE":
        assert decision.decision == "deny", name
