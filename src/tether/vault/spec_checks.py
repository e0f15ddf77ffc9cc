"""Checks of the values inside target specs: URLs, host names, PEM bundles, SSH keys.

Each check takes untrusted text and returns it unchanged or raises ``ValueError`` with a
message naming what is wrong (pydantic turns that into a validation error on the field).
Every check is total: whatever the input, it returns or raises ``ValueError``, nothing else.

Security decisions:

* **URLs** carry no user information (a password in a URL ends up in logs), no fragment,
  no white space or control characters; ``http`` and ``https`` only. Token endpoints
  (:func:`check_token_url`) must be ``https`` unless they are on the loopback interface,
  because the client secret travels to them.
* **Trust material is parsed, not just stored**: a CA bundle must hold at least one PEM
  certificate that loads, a known_hosts text at least one key line whose key loads, a host
  CA exactly one OpenSSH public key; so a typo is refused when the target is added, not
  discovered as a failed (or worse, unverified) connection later.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import SplitResult, urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

MAX_URL_CHARS: Final = 2048
MAX_PEM_CHARS: Final = 256 * 1024
_PEM_LABEL: Final = re.compile(r"-----BEGIN ([^-\r\n]{1,64})-----")
MAX_KNOWN_HOSTS_CHARS: Final = 64 * 1024
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_KEY_BASE64: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_MARKERS: Final = ("@cert-authority", "@revoked")


def no_control(value: str, what: str = "value") -> str:
    """``value`` if it holds no control characters (CR, LF, NUL, ...)."""
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters")
    return value


def check_base_url(value: str) -> str:
    """An ``http``/``https`` URL with a host, and no user info, query or fragment."""
    parts = _split_url(value)
    if parts.query or value.endswith("?"):
        raise ValueError("the base URL must not have a query")
    return value


def check_token_url(value: str) -> str:
    """An ``https`` URL (or ``http`` to a loopback address) for an OAuth 2.0 token endpoint."""
    parts = _split_url(value)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        raise ValueError("the token URL must be https (http only to a loopback address)")
    return value


def check_host(value: str) -> str:
    """An IP address or a DNS host name (labels of letters, digits, ``-`` and ``_``)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError("expected an IP address or a host name")
    return value


def check_pem_bundle(value: str) -> str:
    """PEM text holding at least one X.509 certificate, all of which load."""
    if len(value) > MAX_PEM_CHARS or not value.isascii():
        raise ValueError(f"a CA bundle is ASCII PEM text of at most {MAX_PEM_CHARS} characters")
    other = set(_PEM_LABEL.findall(value)) - {"CERTIFICATE"}
    if other:  # a key pasted in with the CA would be stored in clear
        raise ValueError(f"a CA bundle holds certificates only, not {', '.join(sorted(other))}")
    try:
        certificates = x509.load_pem_x509_certificates(value.encode("ascii"))
    except ValueError:
        raise ValueError("not a PEM bundle of X.509 certificates") from None
    if not certificates:
        raise ValueError("the CA bundle holds no certificate")
    return value


def check_ssh_public_key(value: str) -> str:
    """One OpenSSH public key line, ``TYPE BASE64 [COMMENT]`` (a final newline allowed)."""
    no_control(value.strip(), "an SSH public key")
    fields = value.split()
    if len(fields) < 2:
        raise ValueError("expected an OpenSSH public key line: TYPE BASE64 [COMMENT]")
    _load_key(fields[0], fields[1])
    return value


def check_known_hosts(value: str) -> str:
    """OpenSSH known_hosts text with at least one valid entry and no malformed one."""
    if len(value) > MAX_KNOWN_HOSTS_CHARS:
        raise ValueError(f"known_hosts is at most {MAX_KNOWN_HOSTS_CHARS} characters")
    entries = 0
    for number, line in enumerate(value.splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            _check_known_hosts_line(text)
        except ValueError as error:
            raise ValueError(f"known_hosts line {number}: {error}") from None
        entries += 1
    if entries == 0:
        raise ValueError("known_hosts holds no host key")
    return value


def _check_known_hosts_line(text: str) -> None:
    no_control(text, "a known_hosts line")
    fields = text.split()
    if fields[0].startswith("@"):
        if fields[0] not in _MARKERS:
            raise ValueError(f"unknown marker {fields[0][:40]!r}")
        fields = fields[1:]
    if len(fields) < 3:
        raise ValueError("expected [MARKER] HOSTS TYPE BASE64 [COMMENT]")
    _load_key(fields[1], fields[2])


def _load_key(key_type: str, data: str) -> None:
    if not _KEY_BASE64.fullmatch(data) or not key_type.isascii():
        raise ValueError("the key is not base64")
    try:
        load_ssh_public_key(f"{key_type} {data}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"not a valid {key_type[:40]!r} public key") from None


def _split_url(value: str) -> SplitResult:
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"a URL is at most {MAX_URL_CHARS} characters")
    if _CONTROL.search(value) or any(c.isspace() for c in value) or not value.isascii():
        raise ValueError("a URL must not contain white space, control or non-ASCII characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("the URL scheme must be http or https")
    if "@" in parts.netloc:
        raise ValueError("the URL must not carry user information (use a credential)")
    if parts.fragment or "#" in value:
        raise ValueError("the URL must not have a fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None
    if port == 0 or not parts.hostname:
        raise ValueError("the URL needs a host (and a port from 1 to 65535, if any)")
    check_host(parts.hostname)  # a bracketed IPv6 literal's hostname is the bare address
    return parts


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
