"""The SSH user name an agent logs in with: ``<remote login>@<target>``.

Standard clients pass the user name through untouched, so the target and the remote login
ride in it, with no wrapper and no client configuration::

    ssh  -p 2222 root@web-1@tether.example              # user "root@web-1"
    sftp -P 2222 deploy@web-1@tether.example
    scp  -P 2222 report.csv deploy@web-1@tether.example:/srv/in/

OpenSSH splits the destination at its **last** ``@``, and so does Tether: the user name
``root@web-1`` means remote login ``root`` on target ``web-1``. A remote login may itself hold
an ``@`` (``alice@corp@web-1`` is login ``alice@corp`` on ``web-1``); a target name never does
(targets are DNS labels).

Security decisions: the parser is strict and total. A name it cannot read whole (no ``@``, an
empty side, a target that is not a DNS label, a login with characters outside the set OpenSSH
accepts as a principal, anything longer than :data:`MAX_LOGIN_LENGTH`) is refused, never
guessed at; the broker then fails the login without dialling anything. Whether the remote
login is one of the target's ``users`` is checked by the broker against the target record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_LOGIN_LENGTH: Final = 128
_TARGET: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_REMOTE: Final = re.compile(r"[A-Za-z0-9_.@+][A-Za-z0-9_.@+-]{0,63}")


class LoginError(ValueError):
    """The SSH user name is not ``<remote login>@<target>``; the message says why."""


@dataclass(frozen=True, slots=True)
class Login:
    """What an SSH user name asks for."""

    remote_user: str
    target: str

    def __str__(self) -> str:
        return f"{self.remote_user}@{self.target}"


def parse_login(username: str) -> Login:
    """The login a user name asks for; :class:`LoginError` when it is not one."""
    if not isinstance(username, str) or not 0 < len(username) <= MAX_LOGIN_LENGTH:
        raise LoginError(f"the user name must be 1..{MAX_LOGIN_LENGTH} characters")
    remote, sep, target = username.rpartition("@")
    if not sep:
        raise LoginError("log in as <remote login>@<target>, e.g. root@web-1")
    if not _TARGET.fullmatch(target):
        raise LoginError("the target name after the last '@' is not a valid target name")
    if not _REMOTE.fullmatch(remote):
        raise LoginError("the remote login before the last '@' is not a valid login name")
    return Login(remote, target)
