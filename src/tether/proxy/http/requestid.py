"""Request ids: 16 hex digits naming one broker request in its response, refusal and
audit events.

Security decisions:

* **Unpredictable, as before**: every id is 8 bytes of the operating system's CSPRNG
  (``os.urandom``), the same source as ``secrets.token_hex(8)``. The bytes are read 4 KiB
  at a time (512 ids) instead of one ``getrandom`` system call per request (a call that
  lets go of the GIL, which the audit writer's thread then takes); each byte is handed
  out once.
* **Never shared across a fork**: the buffer is emptied in a forked child
  (``os.register_at_fork``), so a parent and its child cannot hand out the same ids.
"""

from __future__ import annotations

import os
import weakref
from typing import Final

_ID_BYTES: Final = 8
_BATCH: Final = 512


class RequestIds:
    """Hands out request ids from a buffer of CSPRNG bytes, refilled when empty (one
    instance per event loop: it is not shared between threads)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._next = 0
        _LIVE.add(self)

    def drop(self) -> None:
        """Forget the buffered bytes (the next id reads fresh ones)."""
        self._buffer, self._next = b"", 0

    def new(self) -> str:
        """A fresh id (16 lower-case hex digits)."""
        start = self._next
        if start + _ID_BYTES > len(self._buffer):
            self._buffer, start = os.urandom(_ID_BYTES * _BATCH), 0
        self._next = start + _ID_BYTES
        return self._buffer[start : start + _ID_BYTES].hex()


_LIVE: Final[weakref.WeakSet[RequestIds]] = weakref.WeakSet()


def _after_fork() -> None:
    for ids in list(_LIVE):
        ids.drop()


os.register_at_fork(after_in_child=_after_fork)
