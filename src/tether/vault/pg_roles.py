"""Dynamic PostgreSQL credentials: one login role per broker session, dropped afterwards.

For a target whose credential is ``dynamic``, the broker connects with the vaulted admin
credential and runs::

    CREATE ROLE "<prefix><20 hex>" LOGIN CONNECTION LIMIT 1
        PASSWORD 'SCRAM-SHA-256$4096:...' VALID UNTIL '<session end>' IN ROLE "<parent_role>"

then logs in as that role for the session. When the session ends it terminates the role's
backends, reassigns what the role created to the parent role, drops its privileges
(``DROP OWNED``) and drops it.

Security decisions:

* **No standing password.** The password is random (256 bits), lives only in this process
  for the login, and reaches the server only as a SCRAM verifier computed here, so the
  server's statement log never holds it.
* **Bounded even if Tether dies.** ``VALID UNTIL`` is the session's end (the token's expiry or
  ``validity_seconds``, whichever is first), and the broker ends the session then, so a
  leftover role can no longer log in. No lease table is needed: :func:`reap` drops every
  role whose name is exactly the prefix and 20 hex digits, whose ``VALID UNTIL`` has
  passed and which is a member of the target's parent role. The broker reaps each dynamic
  target at start and then periodically, so a crash leaves nothing behind for longer than
  that.
* **A reaper touches only its own target's roles.** What a session role owns is
  reassigned to the parent role when it is dropped, so reaping a role made for another
  parent (two targets on one cluster share the default prefix) would hand that role's
  tables to the wrong parent, and to every agent of this target. The membership says which
  parent a role was made for.
* **Names are generated, never taken from input**; the prefix and parent role are validated
  by the target spec (:mod:`tether.vault.target_specs`), and every name is quoted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

SCRAM_ITERATIONS: Final = 4096
_HEX_DIGITS: Final = 20


@dataclass(frozen=True, slots=True)
class AdminLogin:
    """The admin connection to a dynamic target (the password is never in a repr)."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    tls: ssl.SSLContext | None = None
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Lease:
    """A role created for one session."""

    role: str
    password: str = field(repr=False)
    valid_until: datetime


class RoleError(Exception):
    """The admin connection or a role statement failed; the message holds no secret."""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


# The expired roles that are members of the parent role: a session role is created in
# exactly one, so the roles of another target (another parent, the same default prefix,
# the same cluster) are never reassigned here to a parent they were not made for.
_EXPIRED_MEMBERS: Final = (
    "SELECT r.rolname FROM pg_catalog.pg_roles r "
    "JOIN pg_catalog.pg_auth_members m ON m.member = r.oid "
    "JOIN pg_catalog.pg_roles p ON p.oid = m.roleid "
    "WHERE r.rolvaliduntil IS NOT NULL AND r.rolvaliduntil < $1 AND p.rolname = $2"
)


def role_pattern(prefix: str) -> re.Pattern[str]:
    """Exactly the names :func:`create_role` makes with ``prefix``."""
    return re.compile(re.escape(prefix) + f"[0-9a-f]{{{_HEX_DIGITS}}}")


async def _connect(admin: AdminLogin) -> Any:
    try:
        return await asyncpg.connect(
            host=admin.host, port=admin.port, user=admin.user, password=admin.password,
            database=admin.database, ssl=admin.tls if admin.tls is not None else False,
            timeout=admin.timeout, server_settings={"application_name": "tether-roles"},
        )  # fmt: skip
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        raise RoleError(f"admin login to {admin.host}:{admin.port} failed: {error}") from None


async def create_role(
    admin: AdminLogin, *, prefix: str, parent_role: str, valid_until: datetime
) -> Lease:
    """A new login role in ``parent_role``, valid until ``valid_until``."""
    role = prefix + secrets.token_hex(_HEX_DIGITS // 2)
    password = secrets.token_urlsafe(32)
    until = valid_until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")
    statement = (
        f"CREATE ROLE {quote_ident(role)} LOGIN CONNECTION LIMIT 1 "
        f"PASSWORD '{scram_verifier(password)}' VALID UNTIL '{until}' "
        f"IN ROLE {quote_ident(parent_role)}"
    )
    conn = await _connect(admin)
    try:
        await conn.execute(statement)
    except asyncpg.PostgresError as error:
        raise RoleError(f"cannot create a session role: {error}") from None
    finally:
        await conn.close()
    return Lease(role, password, valid_until)


async def _drop(conn: Any, role: str, parent_role: str) -> bool:
    quoted = quote_ident(role)
    try:
        # Ending the role's backends and REASSIGN OWNED both need the admin to hold the
        # role's privileges: CREATEROLE alone gives neither, and without the grant first a
        # backend still running a statement made the whole drop fail (permission denied).
        await conn.execute(f"GRANT {quoted} TO CURRENT_USER")
        await conn.execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
            "WHERE usename = $1",
            role,
        )
    except asyncpg.PostgresError as error:
        log.warning("could not end the backends of %s: %s", role, error)
    try:
        async with conn.transaction():
            await conn.execute(f"REASSIGN OWNED BY {quoted} TO {quote_ident(parent_role)}")
            await conn.execute(f"DROP OWNED BY {quoted}")
    except asyncpg.PostgresError as error:
        log.warning("could not reassign what %s owns: %s", role, error)
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {quoted}")
    except asyncpg.PostgresError as error:
        log.warning("could not drop session role %s (the reaper retries): %s", role, error)
        return False
    return True


async def drop_role(admin: AdminLogin, role: str, *, parent_role: str) -> bool:
    """Terminate ``role``'s backends and drop it; False if it could not be dropped."""
    conn = await _connect(admin)
    try:
        return await _drop(conn, role, parent_role)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
        raise RoleError(f"dropping session role {role} failed: {error}") from None
    finally:
        await _close(conn)


async def _close(conn: Any) -> None:
    try:
        await conn.close(timeout=5)
    except (asyncpg.InterfaceError, OSError, TimeoutError):
        conn.terminate()  # the connection broke: just drop it


async def reap(
    admin: AdminLogin, *, prefix: str, parent_role: str, now: datetime | None = None
) -> list[str]:
    """Drop every expired session role of ``prefix``; the names dropped."""
    moment = now or datetime.now(UTC)
    pattern = role_pattern(prefix)
    conn = await _connect(admin)
    dropped: list[str] = []
    try:
        rows = await conn.fetch(_EXPIRED_MEMBERS, moment, parent_role)
        for row in rows:
            name = row["rolname"]
            if pattern.fullmatch(name) and await _drop(conn, name, parent_role):
                dropped.append(name)
    except asyncpg.PostgresError as error:
        raise RoleError(f"reaping session roles failed: {error}") from None
    finally:
        await conn.close()
    return dropped
