"""How admin commands talk to a Tether server: options, the admin token, error mapping.

Every refusal becomes one line on standard error and an exit code of its own (see
docs/cli.md): the server unreachable (3), the admin token refused (4), not found (5),
a conflict with the current state (6), a request the server found invalid (2), anything
else (1).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import httpx
import typer

from tether.cli.common import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_UNUSABLE,
    fail,
)

SERVER_ENV: Final = "TETHER_SERVER"
TOKEN_ENV: Final = "TETHER_ADMIN_TOKEN"  # noqa: S105 - a variable's name
_TOKEN_TEXT: Final = re.compile(r"[\x21-\x7e]{1,4096}")
DEFAULT_SERVER: Final = "http://127.0.0.1:8765"
TIMEOUT: Final = 30.0

Server = Annotated[
    str,
    typer.Option(
        "--server",
        "-s",
        envvar=SERVER_ENV,
        metavar="URL",
        help="Base URL of the Tether server (also TETHER_SERVER).",
    ),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        metavar="FILE",
        show_default=False,
        help="File holding the admin token. Default: the TETHER_ADMIN_TOKEN variable.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]

_EXIT_BY_STATUS: Final = {
    400: EXIT_UNUSABLE,
    401: EXIT_UNAUTHORIZED,
    403: EXIT_UNAUTHORIZED,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    422: EXIT_UNUSABLE,
}


def admin_token(token_file: Path | None) -> str:
    """The admin token from ``--token-file``, else ``TETHER_ADMIN_TOKEN``; exits 2 if none."""
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            fail(f"cannot read {token_file}: {(error.strerror or str(error)).lower()}")
        except UnicodeDecodeError:
            fail(f"{token_file} is not a text file")
        if not text:
            fail(f"{token_file} is empty")
        return checked_token(text, str(token_file))
    text = os.environ.get(TOKEN_ENV, "").strip()
    if not text:
        fail(f"no admin token: set {TOKEN_ENV} or pass --token-file")
    return checked_token(text, TOKEN_ENV)


def checked_token(text: str, source: str) -> str:
    """``text`` if it is one token (printable ASCII, no blank); exits 2 naming ``source``
    otherwise, never showing the text (an HTTP library's error would quote it)."""
    if not _TOKEN_TEXT.fullmatch(text):
        fail(f"the token in {source} is not one line of printable ASCII without blanks")
    return text


def http_client(
    server: str, headers: dict[str, str], transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The client of the API at ``server``; exits 2 when ``server`` is not a URL."""
    try:
        return httpx.Client(base_url=server, headers=headers, timeout=TIMEOUT,
                            transport=transport)  # fmt: skip
    except httpx.InvalidURL:
        fail(f"{server!r} is not a valid server URL")


def json_answer(response: httpx.Response, server: str) -> Any:
    """The JSON of a successful answer; exits when it is none (not a Tether server)."""
    try:
        return response.json()
    except ValueError:
        fail(f"the server at {server} did not answer JSON: is it a Tether server?", EXIT_FAILED)


class AdminClient:
    """Calls the admin API with the admin token; exits with a clean message on any refusal."""

    def __init__(self, server: str, token: str, transport: httpx.BaseTransport | None = None):
        self.server = server.rstrip("/")
        self._http = http_client(self.server, {"authorization": f"Bearer {token}"}, transport)

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer of ``method path``; exits on a transport error or a refusal."""
        try:
            with self._http as http:
                response = http.request(method, path, json=body, params=params)
        except httpx.InvalidURL:
            fail(f"{self.server!r} is not a valid server URL")
        except httpx.TransportError as error:
            reason = _reason(error)
            fail(f"cannot reach the Tether server at {self.server}: {reason}", EXIT_UNREACHABLE)
        if not response.is_success:
            _refused(response)
        return json_answer(response, self.server)


def _refused(response: httpx.Response) -> NoReturn:
    detail = None
    try:
        body = response.json()
        if isinstance(body, dict):
            detail = body.get("detail") or body.get("error_description")
    except ValueError:
        pass
    message = f"server refused ({response.status_code})"
    if response.status_code in (401, 403):
        message = f"the server refused the admin token ({response.status_code})"
    code = _EXIT_BY_STATUS.get(response.status_code, EXIT_FAILED)
    fail(f"{message}: {detail}" if detail else message, code)


def _reason(error: httpx.TransportError) -> str:
    text = str(error) or type(error).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text.splitlines()[0].lower()
