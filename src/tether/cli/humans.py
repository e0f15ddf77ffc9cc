"""How commands act as a signed-in human: the stored login, and the API client they use.

``tether login`` stores a personal API token in ``$XDG_CONFIG_HOME/tether/login.json``
(default ``~/.config/tether/login.json``), written with mode 0600, together with the
server it was issued by. Commands of humans (``tether approvals``, ``tether user``) take
their token from, in order: ``--token-file``; the stored login, *only when its server is
the one the command talks to* (a token is never sent to another server); the
``TETHER_ADMIN_TOKEN`` variable (an admin token, or a personal token).

Refusals are one line on standard error with the exit codes of docs/cli.md: 3 the server
is unreachable, 4 not signed in or not allowed (401/403), 5 not found, 6 a conflict
(already decided, already voted), 2 a request the server found invalid, 1 anything else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final, NoReturn

import httpx

from tether.cli.apiclient import TIMEOUT, TOKEN_ENV, checked_token, http_client, json_answer
from tether.cli.common import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_UNUSABLE,
    fail,
)

LOGIN_FILE: Final = "login.json"
_EXIT_BY_STATUS: Final = {
    400: EXIT_UNUSABLE,
    401: EXIT_UNAUTHORIZED,
    403: EXIT_UNAUTHORIZED,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    413: EXIT_UNUSABLE,
    422: EXIT_UNUSABLE,
}


def login_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tether" / LOGIN_FILE


def save_login(server: str, token: str, user: str, token_id: str) -> Path:
    """Store the token for ``server`` (mode 0600, replacing any previous login)."""
    path = login_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps({"server": server.rstrip("/"), "token": token, "user": user, "id": token_id})
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data + "\n")
    path.with_suffix(".tmp").replace(path)
    return path


def stored_login() -> dict[str, str] | None:
    try:
        data = json.loads(login_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("server", "token")
    ):
        return None
    return {k: str(v) for k, v in data.items()}


def human_token(server: str, token_file: Path | None) -> str:
    """The token a human command uses (see the module docstring); exits 2 without one."""
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            fail(f"cannot read {token_file}: {error}")
        if not text:
            fail(f"{token_file} is empty")
        return checked_token(text, str(token_file))
    login = stored_login()
    if login is not None and login["server"] == server.rstrip("/"):
        return checked_token(login["token"], str(login_path()))
    text = os.environ.get(TOKEN_ENV, "").strip()
    if not text:
        fail(f"not signed in to {server}: run `tether login`, or set {TOKEN_ENV}")
    return checked_token(text, TOKEN_ENV)


class HumanClient:
    """Calls the API with a personal (or admin) token; exits cleanly on any refusal."""

    def __init__(self, server: str, token: str | None) -> None:
        self.server = server.rstrip("/")
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        self._http = http_client(self.server, headers)

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float = TIMEOUT,
    ) -> Any:
        try:
            with self._http as http:
                response = http.request(method, path, json=body, params=params, timeout=timeout)
        except httpx.InvalidURL:
            fail(f"{self.server!r} is not a valid server URL")
        except httpx.TransportError as error:
            first = (str(error) or type(error).__name__).splitlines()[0].lower()
            fail(f"cannot reach the Tether server at {self.server}: {first}", EXIT_UNREACHABLE)
        if not response.is_success:
            _refused(response)
        return json_answer(response, self.server)


def _refused(response: httpx.Response) -> NoReturn:
    detail = None
    try:
        body = response.json()
        if isinstance(body, dict):
            detail = body.get("detail")
    except ValueError:
        pass
    message = f"server refused ({response.status_code})"
    code = _EXIT_BY_STATUS.get(response.status_code, EXIT_FAILED)
    fail(f"{message}: {detail}" if detail else message, code)
