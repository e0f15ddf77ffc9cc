"""Which headers cross the broker, each way (pure functions over ``(name, value)`` bytes).

Request (agent → target), :func:`request_headers` drops:

* the agent's credentials for Tether: ``Authorization``, ``DPoP``, ``Proxy-Authorization``;
* hop-by-hop headers (RFC 9110 section 7.6.1: ``Connection``, ``Keep-Alive``,
  ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``) and every
  header the agent's ``Connection`` header names, since they were meant for Tether;
* ``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``: a target must not believe what the
  agent says about where the request came from;
* ``Host`` (the target's own is set), ``Expect`` (Tether answers ``100-continue`` itself)
  and any header named like the injected credential, so the agent cannot shadow it;
* ``Content-Length`` when the agent also sent ``Transfer-Encoding`` (RFC 9112 section 6.1:
  the body was read chunked, so the length is not the body's and must not be forwarded);
* cookies of other targets. Cookies are scoped by name: the broker renames every cookie a
  target sets to ``<target>.<name>`` (:func:`response_headers`), and forwards to a target
  only the cookies carrying its prefix, with the prefix removed. On the shared ``/t/``
  origin an agent's cookie jar holds every target's cookies; none leaks to another target.

Response (target → agent), :func:`response_headers` drops hop-by-hop and
``Connection``-listed headers, ``Content-Length`` when the target also sent
``Transfer-Encoding`` (the body was read chunked, RFC 9112 section 6.3; the agent's side
frames it anew), and any header whose value contains the injected credential, as is or
once percent-decoded (a target that echoes it, say in a redirect's query, must not hand
it to the agent); it renames cookies as above,
drops their ``Domain`` and, on the path form, confines their ``Path`` to ``/t/<target>``.

Security decisions: names compare case-insensitively (ASGI gives them lower-cased, h11
too) and, on the request side, with ``_`` read as ``-``: CGI, WSGI, PHP and some proxies
fold the two (``X_Forwarded_For`` is their ``HTTP_X_FORWARDED_FOR``), so a header dropped
under one spelling is dropped under the other (as the policy finds override headers); a
malformed ``Connection`` value still removes what it names and never adds anything;
nothing here can add a header the agent sent under another name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes, urlsplit

Header = tuple[bytes, bytes]

HOP_BY_HOP: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
    }
)  # fmt: skip
# The agent's credentials, and what would claim another client address (Rails reads
# Client-IP, CDNs' True-Client-IP and CF-Connecting-IP, ...; X-Forwarded-* by prefix).
_AGENT_ONLY: Final = frozenset(
    {b"authorization", b"dpop", b"forwarded", b"x-real-ip", b"host", b"expect", b"cookie",
     b"client-ip", b"true-client-ip", b"x-client-ip", b"x-cluster-client-ip",
     b"cf-connecting-ip", b"fastly-client-ip", b"x-originating-ip", b"x-remote-ip",
     b"x-remote-addr"}
)  # fmt: skip
COOKIE_SEPARATOR: Final = b"."


@dataclass(frozen=True, slots=True)
class TargetBase:
    """Where the target is (its base URL), to map its redirects back to the agent's URLs."""

    scheme: str  # "http" or "https"
    host: str  # lower case, without brackets
    port: int
    path: bytes  # the base URL's path without its trailing '/', b"" for none

    def own_path(self, location: bytes) -> bytes | None:
        """The path (and query) of ``location`` when it is an absolute URL at the target's
        own origin, else None."""
        try:
            parts = urlsplit(location.decode("latin-1"))
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            return None
        if parts.scheme.lower() != self.scheme or parts.hostname != self.host:
            return None
        if port != self.port or parts.username is not None or not parts.netloc:
            return None
        rest = location[len(parts.scheme) + 3 + len(parts.netloc) :]
        return rest if rest.startswith(b"/") else b"/" + rest


def connection_listed(headers: Iterable[Header]) -> frozenset[bytes]:
    """The header names listed in every ``Connection`` header, lower-cased."""
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(p.strip().lower() for p in value.split(b",") if p.strip())
    return frozenset(listed)


def _folded(name: bytes) -> bytes:
    """A request header name as targets may read it: lower case, ``_`` and ``.`` for ``-``
    (CGI and PHP's server fold both into ``_``)."""
    return name.lower().replace(b"_", b"-").replace(b".", b"-")


def request_headers(
    headers: Sequence[Header], target: str, *, injected: Iterable[bytes] = ()
) -> list[Header]:
    """The agent's headers that may reach ``target`` (cookies re-scoped, see above)."""
    drop = HOP_BY_HOP | _AGENT_ONLY | {_folded(n) for n in connection_listed(headers)}
    drop |= {_folded(name) for name in injected}
    if any(name.lower() == b"transfer-encoding" for name, _ in headers):
        drop |= {b"content-length"}
    kept: list[Header] = []
    cookies: list[bytes] = []
    for name, value in headers:
        lower, key = name.lower(), _folded(name)
        if lower == b"cookie":
            cookies.extend(_own_cookies(value, target))
        elif key not in drop and not key.startswith(b"x-forwarded-"):
            kept.append((lower, value))
    if cookies:
        kept.append((b"cookie", b"; ".join(cookies)))
    return kept


def _own_cookies(value: bytes, target: str) -> list[bytes]:
    prefix = target.encode("ascii") + COOKIE_SEPARATOR
    own: list[bytes] = []
    for pair in value.split(b";"):
        pair = pair.strip()
        if pair.startswith(prefix) and b"=" in pair[len(prefix) :]:
            own.append(pair[len(prefix) :])
    return own


def response_headers(
    headers: Sequence[Header],
    target: str,
    *,
    path_prefix: str | None,
    secrets: Sequence[bytes] = (),
    base: TargetBase | None = None,
) -> list[Header]:
    """The target's headers that may reach the agent.

    ``path_prefix`` is ``/t/<target>`` on the path form (cookie paths and relative
    redirects are moved under it), None on the host form. ``base``, the target's base URL:
    a redirect to a path under its path, or to an absolute URL under it, is mapped back to
    the agent's path (``/v2/items`` is the agent's ``/items`` when the base URL ends in
    ``/v2``).
    """
    drop = HOP_BY_HOP | connection_listed(headers)
    if any(name.lower() == b"transfer-encoding" for name, _ in headers):
        drop |= {b"content-length"}
    kept: list[Header] = []
    for name, value in headers:
        lower = name.lower()
        if lower in drop or _holds(value, secrets):
            continue
        if lower == b"set-cookie":
            cookie = _scoped_cookie(value, target, path_prefix, base)
            if cookie is not None:
                kept.append((lower, cookie))
        elif lower == b"location":
            location = _location(value, path_prefix, base)
            if location is not None:
                kept.append((lower, location))
        else:
            kept.append((lower, value))
    return kept


def _location(value: bytes, path_prefix: str | None, base: TargetBase | None) -> bytes | None:
    """A target's ``Location`` as the agent gets it (None: dropped). A path is the target's:
    its base path comes off and, on the path form, ``/t/<target>`` goes in front; so does
    an absolute URL of the target's own origin under its base path (the agent could not use
    it, and it would learn the target's address). A network-path reference (``//host``) on
    the path form is dropped; any other value passes as is."""
    own = base.own_path(value) if base is not None else None
    if own is None and not (value.startswith(b"/") and not value.startswith(b"//")):
        return None if path_prefix is not None and value.startswith(b"//") else value
    path = value if own is None else own
    if base is not None and base.path and path.startswith(base.path + b"/"):
        path = path[len(base.path) :]
    elif own is not None and base is not None and base.path:
        return value  # the target's origin, outside its base path: no path of the agent's
    if path_prefix is not None:
        return path_prefix.encode("ascii") + path
    # Never a new network-path reference: '//host', or '/\host', which browsers read so.
    return value if path[1:2] in (b"/", b"\\") else path


def _holds(value: bytes, secrets: Sequence[bytes]) -> bool:
    """Whether ``value`` carries one of ``secrets`` (the brokers pass every form an echo may
    show, JSON- and HTML-escaped too: :func:`tether.proxy.http.scrub.forms`), also
    URL-encoded (any hex case, ``+`` for a space)."""
    if not secrets:
        return False
    forms = [value]
    if b"%" in value or b"+" in value:
        forms += [unquote_to_bytes(value), unquote_to_bytes(value.replace(b"+", b" "))]
    return any(s and s in form for s in secrets for form in forms)


def _scoped_cookie(
    value: bytes, target: str, path_prefix: str | None, base: TargetBase | None = None
) -> bytes | None:
    """``Set-Cookie`` renamed to ``<target>.<name>``, without ``Domain``, path confined (a
    path under the target's base path is the agent's path: the base path comes off)."""
    first, *attributes = value.split(b";")
    name, eq, cookie_value = first.strip().partition(b"=")
    if not eq or not name.strip():
        return None
    path = b"/"
    kept: list[bytes] = []
    for attribute in attributes:
        key, _, rest = attribute.strip().partition(b"=")
        lowered = key.strip().lower()
        if lowered == b"domain":
            continue
        if lowered == b"path":
            path = rest.strip() if rest.strip().startswith(b"/") else b"/"
            continue
        kept.append(attribute.strip())
    if base is not None and base.path and (path == base.path or path.startswith(base.path + b"/")):
        path = path[len(base.path) :] or b"/"
    if path_prefix is not None:
        path = path_prefix.encode("ascii") + path
    renamed = target.encode("ascii") + COOKIE_SEPARATOR + name.strip()
    return b"; ".join([renamed + b"=" + cookie_value, b"Path=" + path, *kept])
