"""Which target a request is for, and the exact URL the agent used (the DPoP ``htu``).

Two forms (docs/http-broker.md):

* **Path form** ``/t/<target>/<path>``: the target is the second raw segment, the path
  inside the target is the rest of the **raw** request path starting at its ``/``;
  ``/t/<target>`` alone is not a route (it would make ``/t/x`` and ``/t/x/`` one path).
* **Host form** ``<target>.<domain>``, only when ``http_proxy.domain`` is set: the whole
  raw path is the path inside the target.

Security decisions:

* **Raw bytes only.** The route is cut from the ASGI ``raw_path``, never from the decoded
  ``path``, so ``/t/demo/a%2F..`` reaches the path checks as sent; the target name must be a
  plain DNS label (no escapes), so ``/t/de%6Do/`` names no target.
* **The htu is what the agent used**: the issuer URL (path form) or ``scheme://Host``
  (host form) plus the raw path; a proof made for another URL fails verification.
* A ``Host`` that is not exactly one DNS label under the domain (with an optional port)
  routes nowhere, so it falls through to the API and selects no target.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

PATH_PREFIX: Final = b"/t/"
_LABEL: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PORT: Final = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class Route:
    """A request for a target."""

    target: str
    path: str  # the raw path inside the target (always starts with '/')
    query: str  # the raw query string, '' when absent
    url: str  # the URL the agent used, without the query: the DPoP htu
    path_prefix: str | None  # '/t/<target>' on the path form, None on the host form

    @property
    def request_target(self) -> str:
        """Path and query, as the policy sees them and the target receives them."""
        return f"{self.path}?{self.query}" if self.query else self.path


def host_of(headers: Any) -> bytes | None:
    """The single ``Host`` header of an ASGI header list (None when absent or repeated)."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"host":
            if found is not None:
                return None
            found = value
    return found


class Router:
    """Finds the route of an ASGI scope, or None when the request is not for the broker."""

    def __init__(self, *, issuer: str, domain: str = "", scheme: str = "http") -> None:
        self._issuer = issuer.rstrip("/")
        self._suffix = "." + domain if domain else ""
        self._scheme = scheme

    def route(self, scope: Mapping[str, Any]) -> Route | None:
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        if self._suffix:
            found = self._by_host(scope, raw, query)
            if found is not None:
                return found
        if raw.startswith(PATH_PREFIX):
            return self._by_path(raw, query)
        return None

    def _by_path(self, raw: bytes, query: str) -> Route | None:
        name, slash, _rest = raw[len(PATH_PREFIX) :].partition(b"/")
        text = name.decode("latin-1")
        if not slash or _LABEL.fullmatch(text) is None:
            return None
        prefix = "/t/" + text
        path = raw.decode("latin-1")[len(prefix) :]
        return Route(text, path, query, self._issuer + raw.decode("latin-1"), prefix)

    def _by_host(self, scope: Mapping[str, Any], raw: bytes, query: str) -> Route | None:
        host = host_of(scope.get("headers", ()))
        if host is None:
            return None
        text = host.decode("latin-1").lower()
        name, colon, port = text.partition(":")
        if colon and _PORT.fullmatch(port) is None:
            return None
        if not name.endswith(self._suffix):
            return None
        label = name[: -len(self._suffix)]
        if _LABEL.fullmatch(label) is None:
            return None
        path = raw.decode("latin-1")
        return Route(label, path, query, f"{self._scheme}://{text}{path}", None)


def query_keys(query: str) -> list[str]:
    """The distinct parameter names of a raw query string, in order (values never)."""
    keys: dict[str, None] = {}
    for part in query.split("&"):
        if part:
            keys.setdefault(part.partition("=")[0][:128], None)
    return list(keys)
