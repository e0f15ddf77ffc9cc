"""Cancel keys: the ``BackendKeyData`` Tether gives clients, and cancel requests it passes on.

A client is never shown the server's process id and secret key. Each session gets Tether's
own (:meth:`CancelKeys.issue`), mapped to the server's key and login; a ``CancelRequest``
arrives on a new connection (:mod:`tether.proxy.pg.handshake`) and :meth:`CancelKeys.cancel`
sends the server's own cancel request for it (:func:`tether.proxy.pg.upstream.send_cancel`).

Security decisions:

* Keys are random (``secrets``): a process id in 1..2**31-1, unique among live sessions,
  and a 4-byte secret. A session's key is forgotten when the session ends.
* A cancel request is sent on to the server only for a live process id whose secret matches
  (compared in constant time); anything else is dropped, and the client hears nothing either
  way (as from PostgreSQL), so a guess learns nothing.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from tether.proxy.pg import backend as be
from tether.proxy.pg import codec as c
from tether.proxy.pg.upstream import Login, send_cancel


@dataclass
class _Live:
    key: bytes
    upstream_key: be.BackendKeyData | None
    login: Login


class CancelKeys:
    """The cancel keys of the live sessions (see the module docstring)."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._live: dict[int, _Live] = {}

    def issue(self, upstream_key: be.BackendKeyData | None, login: Login) -> tuple[int, bytes]:
        """A new process id and secret key for a session on the server ``login`` names."""
        while True:
            pid = secrets.randbelow(2**31 - 1) + 1
            if pid not in self._live:
                break
        key = secrets.token_bytes(4)
        self._live[pid] = _Live(key, upstream_key, login)
        return pid, key

    def forget(self, pid: int) -> None:
        """The session of ``pid`` ended: its key no longer cancels anything."""
        self._live.pop(pid, None)

    async def cancel(self, request: c.CancelRequest) -> None:
        """Send the server's cancel request if ``request`` carries a live session's key."""
        live = self._live.get(request.process_id)
        if live is None or live.upstream_key is None:
            return
        if not hmac.compare_digest(live.key, request.secret_key):
            return
        await send_cancel(live.login.host, live.login.port, live.login.tls, live.upstream_key,
                          self.connect_timeout)  # fmt: skip
