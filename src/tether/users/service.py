"""Humans: local users, their roles and groups, login, and personal API tokens.

A personal API token reads ``tpt_<id>.<secret>``; like admin tokens
(:mod:`tether.identity.admintokens`) only the SHA-256 of the whole text is stored and is
the lookup key, so a copy of the database opens nothing and no comparison runs over a
secret. Every token expires (at most ``MAX_TOKEN_TTL``) and can be revoked; a disabled
user's tokens stop working at once (the lookup joins the user's state), and disabling
also revokes them for good, with every agent token delegated by the user
(:meth:`UserService.disable`).

Login (:meth:`UserService.login`) checks the argon2 password hash and, when the user has
enrolled TOTP, a one-time code that is then spent. Every refusal is the same
:class:`LoginRefused` whatever failed (unknown user, wrong password, missing or wrong
code, disabled), so the answer does not tell which names exist. TOTP secrets are stored
encrypted under the master key (:class:`~tether.crypto.envelope.EnvelopeCipher`, bound to
the user id), since the server must read them back to check a code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.approvals import store as approvals_store
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.seal import RowSealer
from tether.identity.revocation import RevocationSet
from tether.store import credentials as cred_store
from tether.store.identity import digest
from tether.users import passwords, throttle, totp
from tether.users import store as user_store
from tether.users.schema import ROLES
from tether.users.store import TOTP_PURPOSE, USERS, User, UserToken

if TYPE_CHECKING:
    from tether.users.oidc import OidcLogin

log = logging.getLogger(__name__)

USER_TOKEN_PREFIX: Final = "tpt_"  # noqa: S105 - a public prefix, not a secret
USER_ID: Final = re.compile(r"[a-z0-9][a-z0-9._@-]{0,99}")
GROUP_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,99}")
DEFAULT_TOKEN_TTL: Final = 30 * 86400
MAX_TOKEN_TTL: Final = 365 * 86400
MAX_PRESENTED: Final = 256
MAX_FAILURES: Final = 10
FAILURE_WINDOW: Final = 900.0


class UserError(Exception):
    """A change the user store refuses; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LoginRefused(Exception):
    """Wrong name, password or code, or a disabled user: deliberately not saying which."""


class LoginThrottled(LoginRefused):
    """Too many failed logins for this name lately; try again later."""


@dataclass(frozen=True, slots=True)
class Disabled:
    """What disabling a user ended besides their login and personal tokens."""

    user: User
    delegations: list[str]  # the ids of the credentials delegated by the user, revoked
    grants: list[str]  # the access requests whose grant lost its quorum, revoked


@functools.cache
def _dummy_hash() -> str:
    """A real argon2 hash of a random password, checked for unknown users."""
    return passwords.hash_password(secrets.token_urlsafe(24))


class UserService:
    """Users, roles, groups, login and personal tokens over the store."""

    def __init__(
        self,
        engine: AsyncEngine,
        cipher: EnvelopeCipher,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sealer: RowSealer | None = None,
        save_revisions: Callable[[], Awaitable[None]] | None = None,
        revoked: RevocationSet | None = None,
    ) -> None:
        self.engine, self.cipher, self.clock = engine, cipher, clock
        # Users are sealed (tether.users.store); a node passes its identity service's
        # sealer, which remembers the newest revision of each user it admitted, and how
        # to save those (tether.identity.revision_copy).
        self.sealer = cipher.sealer if sealer is None else sealer
        self._save_revisions = save_revisions
        # The node's revocation list: a personal token revoked there stays refused even
        # when its row is put back live (tether.users.store.personal_token_revocation).
        self._revoked = revoked
        self.oidc: OidcLogin | None = None  # sign-in through a provider, when configured

    # --- users ----------------------------------------------------------------------------

    async def add(
        self,
        user_id: str,
        *,
        password: str | None,
        roles: Iterable[str] = (),
        groups: Iterable[str] = (),
        display_name: str | None = None,
        email: str | None = None,
        source: str = "local",
    ) -> User:
        """A new active user; ``UserError`` (409) when the id is taken."""
        _check_id(user_id)
        roles, groups = _check_roles(roles), _check_groups(groups)
        hashed = None
        if password is not None:
            hashed = await asyncio.to_thread(_hash, password)
        now = self.clock()
        try:
            async with self.engine.begin() as conn:
                await user_store.insert_user(
                    conn, id=user_id, source=source, now=now, password_hash=hashed,
                    display_name=display_name, email=email,
                )  # fmt: skip
                await user_store.set_roles(conn, user_id, roles)
                await user_store.set_groups(conn, user_id, groups, now)
                revision = await user_store.seal_user(conn, self.sealer, user_id)
        except IntegrityError:
            raise UserError(f"user {user_id!r} already exists", 409) from None
        await self._revised(user_id, revision)
        return await self.get(user_id)

    async def get(self, user_id: str) -> User:
        """The user; ``UserError`` 404 when there is none, 409 when its seal does not
        verify (the admin is told, rather than shown a user that does not exist)."""
        async with self.engine.connect() as conn:
            user = await user_store.get_user(conn, self.sealer, user_id)
            present = user is not None or await user_store.user_state(conn, user_id) is not None
        if user is None and present:
            raise UserError(
                f"user {user_id!r} is refused: it was changed outside Tether (docs/vault.md, "
                "Tampering with the database)",
                409,
            )
        if user is None:
            raise UserError(f"no user {user_id!r}", 404)
        return user

    async def find(self, user_id: str) -> User | None:
        async with self.engine.connect() as conn:
            return await user_store.get_user(conn, self.sealer, user_id)

    async def all(self) -> list[User]:
        async with self.engine.connect() as conn:
            return await user_store.list_users(conn)

    async def update(
        self,
        user_id: str,
        *,
        roles: Iterable[str] | None = None,
        groups: Iterable[str] | None = None,
    ) -> User:
        """Replace a user's roles and/or groups."""
        checked_roles = None if roles is None else _check_roles(roles)
        checked_groups = None if groups is None else _check_groups(groups)
        now = self.clock()
        async with self.engine.begin() as conn:
            intact = await user_store.user_intact(conn, self.sealer, user_id)
            if not await user_store.update_user(conn, user_id, now):
                raise UserError(f"no user {user_id!r}", 404)
            if checked_roles is not None:
                await user_store.set_roles(conn, user_id, checked_roles)
            if checked_groups is not None:
                await user_store.set_groups(conn, user_id, checked_groups, now)
            revision = await self._reseal(conn, user_id, intact)
        await self._revised(user_id, revision)
        return await self.get(user_id)

    async def set_password(
        self, user_id: str, password: str, *, keep_token: str | None = None
    ) -> int:
        """Set the user's password and revoke their personal tokens, in one transaction;
        how many tokens were revoked.

        A password is reset because it (or the account) may be in the wrong hands, and
        whoever had it may have made tokens with it: a reset that left those alive would
        leave them in. So every live personal token of the user is revoked, for good,
        except ``keep_token`` (the text of the token making the call, when the user sets
        their own password with it: their session survives, every other one ends). A
        ``keep_token`` of another user matches none of this user's tokens and keeps
        nothing. Credentials delegated by the user are not touched: they come from the
        identity provider's ID tokens, not from the password (:meth:`disable` ends them).
        """
        hashed = await asyncio.to_thread(_hash, password)
        now = self.clock()
        keep = None if keep_token is None else digest(keep_token)
        async with self.engine.begin() as conn:
            intact = await user_store.user_intact(conn, self.sealer, user_id)
            if not await user_store.update_user(conn, user_id, now, password_hash=hashed):
                raise UserError(f"no user {user_id!r}", 404)
            revision = await self._reseal(conn, user_id, intact)
            revoked = await user_store.revoke_user_tokens(
                conn, self.sealer, user_id, now, keep_hash=keep
            )
        await self._revised(user_id, revision)
        return revoked

    async def set_state(self, user_id: str, state: str, *, by: str = "tether") -> User:
        """Enable or disable (:meth:`disable`)."""
        if state == "disabled":
            return (await self.disable(user_id, by=by))[0]
        if state != "active":
            raise UserError("state is active or disabled")
        async with self.engine.begin() as conn:
            intact = await user_store.user_intact(conn, self.sealer, user_id)
            if not await user_store.update_user(conn, user_id, self.clock(), state=state):
                raise UserError(f"no user {user_id!r}", 404)
            revision = await self._reseal(conn, user_id, intact)
        await self._revised(user_id, revision)
        return await self.get(user_id)

    async def disable(self, user_id: str, *, by: str) -> tuple[User, list[str]]:
        """:meth:`disable_user`: the user and the ids of the delegated credentials revoked."""
        done = await self.disable_user(user_id, by=by)
        return done.user, done.delegations

    async def disable_user(self, user_id: str, *, by: str) -> Disabled:
        """Disable a user: their login, every personal token and every live credential
        delegated by them (token exchange with the user as subject) end, for good. The
        revocations are in the store, which every node polls; the caller applies them to
        its own node at once.

        Their approvals stop counting (:mod:`tether.approvals.store`): a pending request
        no longer has them towards its quorum, and every live grant they approved that is
        left with fewer than its ``required`` approvals of active users is revoked, for
        good, in the same transaction (the caller audits them). A grant that still has
        its quorum without them stands: enough other people approved it."""
        now = self.clock()
        async with self.engine.begin() as conn:
            # A user Tether wrote, even one put back older than this node saw, may always
            # be sealed again as disabled: the way back after a restore (docs/vault.md).
            standing = await user_store.user_standing(conn, self.sealer, user_id)
            if not await user_store.update_user(conn, user_id, now, state="disabled"):
                raise UserError(f"no user {user_id!r}", 404)
            revision = await self._reseal(conn, user_id, standing in ("intact", "older"))
            await user_store.revoke_user_tokens(conn, self.sealer, user_id, now)
            revoked = await cred_store.revoke_delegations(
                conn, self.sealer, user_id, reason="the user is disabled", revoked_by=by, now=now
            )
            grants = await approvals_store.revoke_short_of_quorum(
                conn,
                self.sealer,
                user_id,
                f"approver {user_id} was disabled: too few approvals left",
                now,
            )
        await self._revised(user_id, revision)
        return Disabled(await self.get(user_id), revoked, grants)

    async def enroll_totp(self, user_id: str) -> str:
        """A new TOTP secret for the user (returned once, stored encrypted)."""
        secret = totp.new_secret()
        sealed = self.cipher.encrypt_text(secret.encode(), purpose=TOTP_PURPOSE, name=user_id)
        async with self.engine.begin() as conn:
            intact = await user_store.user_intact(conn, self.sealer, user_id)
            done = await user_store.update_user(
                conn, user_id, self.clock(), totp_secret=sealed, totp_last_step=None
            )
            revision = await self._reseal(conn, user_id, intact) if done else None
        if not done:
            raise UserError(f"no user {user_id!r}", 404)
        await self._revised(user_id, revision)
        return secret

    # --- login and tokens -----------------------------------------------------------------

    async def login(self, user_id: str, password: str, code: str | None = None) -> User:
        """The user, when the password (and the TOTP code, if enrolled) are right.

        The argon2 check runs in a worker thread (it takes tens of milliseconds of CPU), and
        against a dummy hash for an unknown user, so the time taken does not tell whether a
        name exists. After ``MAX_FAILURES`` failures for one name within ``FAILURE_WINDOW``
        seconds of the first, that name is refused (``LoginThrottled``) until the window
        has passed; the count is in the store, shared by every node (:mod:`throttle`).
        """
        await self._check_throttle(user_id)
        async with self.engine.connect() as conn:
            row = await user_store.credentials_row(conn, self.sealer, user_id)
        stored = row["password_hash"] if row is not None else None
        ok = await asyncio.to_thread(passwords.verify_password, stored or _dummy_hash(), password)
        if row is None or stored is None or not ok or row["state"] != "active":
            raise self._failed(user_id)
        now = self.clock()
        revision: int | None = None
        async with self.engine.begin() as conn:
            if row["totp_secret"] is not None:
                step = self._totp_step(row["totp_secret"], user_id, code, row["totp_last_step"])
                # Conditional on the step stored when read: two logins cannot spend one code.
                if step is None or not await user_store.spend_totp_step(
                    conn, user_id, row["totp_last_step"], step, now
                ):
                    raise self._failed(user_id)
            if passwords.needs_rehash(stored):
                rehashed = await asyncio.to_thread(passwords.hash_password, password)
                intact = await user_store.user_intact(conn, self.sealer, user_id)
                await user_store.update_user(conn, user_id, now, password_hash=rehashed)
                revision = await self._reseal(conn, user_id, intact)
            user = await user_store.get_user(conn, self.sealer, user_id)
            await throttle.clear(conn, user_id, now, FAILURE_WINDOW)
        await self._revised(user_id, revision)
        assert user is not None
        return user

    async def _reseal(self, conn: AsyncConnection, user_id: str, intact: bool) -> int | None:
        """Seal the user as just changed, if its seal verified before the change (its new
        revision); else it stays refused (a user changed outside Tether, or put back older
        than this node saw, is never blessed by an edit)."""
        if intact:
            return await user_store.seal_user(conn, self.sealer, user_id)
        log.error(
            "user %r changed, but its seal did not verify before: it stays refused (changed "
            "outside Tether, or put back older than a revision this node saw; docs/vault.md, "
            "Tampering with the database)",
            user_id,
        )  # fmt: skip
        return None

    async def _revised(self, user_id: str, revision: int | None) -> None:
        """Once its change committed: never admit an older row of the user again here,
        nor after a restart (the node's file is written before the change is answered)."""
        if revision is None:
            return
        self.sealer.saw(USERS, user_id, revision)
        if self._save_revisions is not None:
            await self._save_revisions()

    async def _check_throttle(self, user_id: str) -> None:
        """Count this attempt in the store (committed at once, before the password is
        checked, so other nodes and concurrent attempts see it); refuse past the limit."""
        async with self.engine.begin() as conn:
            attempts = await throttle.count_attempt(conn, user_id, self.clock(), FAILURE_WINDOW)
        if attempts > MAX_FAILURES:
            raise LoginThrottled

    def _failed(self, user_id: str) -> LoginRefused:
        """The refusal of a failed attempt (already counted by :meth:`_check_throttle`)."""
        return LoginRefused()

    def _totp_step(
        self, sealed: str, user_id: str, code: str | None, last: int | None
    ) -> int | None:
        if code is None:
            return None
        secret = self.cipher.decrypt_text(sealed, purpose=TOTP_PURPOSE, name=user_id).decode()
        return totp.verify(secret, code, self.clock().timestamp(), last)

    async def create_token(
        self,
        user_id: str,
        *,
        name: str,
        ttl: int | None = None,
        not_after: datetime | None = None,
    ) -> tuple[str, UserToken]:
        """A personal API token: its text (shown once) and its record. ``not_after``: the
        expiry of the token the user made it with, which it never outlives."""
        ttl = DEFAULT_TOKEN_TTL if ttl is None else ttl
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise UserError(f"a personal token lives between 1 second and {MAX_TOKEN_TTL} s")
        token_id = secrets.token_hex(8)
        text = f"{USER_TOKEN_PREFIX}{token_id}.{secrets.token_urlsafe(32)}"
        now = self.clock()
        expires_at = now + timedelta(seconds=ttl)
        if not_after is not None:
            if not_after <= now:
                raise UserError("the token it is made with has expired", 401)
            expires_at = min(expires_at, not_after)
        async with self.engine.begin() as conn:
            user = await user_store.get_user(conn, self.sealer, user_id)
            if user is None or not user.active:
                raise UserError(f"no active user {user_id!r}", 404)
            record = await user_store.insert_token(
                conn, self.sealer, id=token_id, user_id=user_id, name=name[:200] or "token",
                token_hash=digest(text), now=now, expires_at=expires_at,
            )  # fmt: skip
        return text, record

    async def authenticate(self, presented: str) -> User | None:
        """The active user a personal token belongs to, else None (the use is recorded)."""
        found = await self.authenticate_token(presented)
        return None if found is None else found[0]

    async def authenticate_token(self, presented: str) -> tuple[User, UserToken] | None:
        """The active user a personal token belongs to and the token's record, else None
        (the use is recorded)."""
        if not presented.startswith(USER_TOKEN_PREFIX) or len(presented) > MAX_PRESENTED:
            return None
        now = self.clock()
        async with self.engine.begin() as conn:
            token = await user_store.find_token(conn, self.sealer, digest(presented), now)
            if token is None:
                return None
            revocation = user_store.personal_token_revocation(token.id)
            if self._revoked is not None and self._revoked.holds("token", revocation):
                log.error("personal token %r refused: it is revoked, but its row is live: the "
                          "database was put back to an earlier state (docs/vault.md, "
                          "Tampering with the database)", token.id)  # fmt: skip
                return None
            await user_store.touch_token(conn, token.id, now)
            user = await user_store.get_user(conn, self.sealer, token.user_id)
        return None if user is None else (user, token)

    async def tokens(self, user_id: str | None = None) -> list[UserToken]:
        async with self.engine.connect() as conn:
            return await user_store.list_tokens(conn, user_id)

    async def revoke_token(self, token_id: str, *, user_id: str | None = None) -> bool:
        async with self.engine.begin() as conn:
            return await user_store.revoke_token(conn, self.sealer, token_id, self.clock(), user_id)

    async def group_members(self, group: str) -> set[str]:
        async with self.engine.connect() as conn:
            return await user_store.group_member_ids(conn, self.sealer, group)


def _hash(password: str) -> str:
    try:
        return passwords.hash_password(password)
    except passwords.WeakPassword as error:
        raise UserError(str(error)) from None


def _check_id(user_id: str) -> None:
    if not USER_ID.fullmatch(user_id):
        raise UserError("a user id is lowercase letters, digits and . _ @ - (at most 100)")


def _check_roles(roles: Iterable[str]) -> list[str]:
    checked = sorted(set(roles))
    unknown = [r for r in checked if r not in ROLES]
    if unknown:
        raise UserError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    return checked


def _check_groups(groups: Iterable[str]) -> list[str]:
    checked = sorted(set(groups))
    bad = [g for g in checked if not GROUP_NAME.fullmatch(g)]
    if bad:
        raise UserError(f"invalid group name(s): {', '.join(bad)}")
    return checked
