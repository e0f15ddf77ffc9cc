"""The OAuth 2.0 token endpoint's grant: token exchange (RFC 8693), Tether's only grant.

Every credential starts with a proof of where the agent runs, presented as the
``subject_token`` of a token exchange, together with a DPoP proof (RFC 9449) whose key the
new token is bound to:

======================================================  ====================================
``subject_token_type``                                  what it proves
======================================================  ====================================
``urn:tether:params:oauth:token-type:join-token``       a one-time join token (single use)
``urn:ietf:params:oauth:token-type:jwt``                a workload token (Kubernetes, CI
                                                        OIDC, SPIFFE JWT-SVID) of a trusted
                                                        issuer, mapped to an agent by config
``urn:ietf:params:oauth:token-type:access_token``       a Tether token of the same agent
                                                        (re-scoped for another task)
``urn:ietf:params:oauth:token-type:id_token`` + actor   a user's OIDC token with the agent's
                                                        Tether token as ``actor_token``:
                                                        delegation, ``act`` names the agent
                                                        (or, for a delegated actor token,
                                                        its user, the agent nested inside)
======================================================  ====================================

A token derived from another one (re-scoping, delegation) only ever narrows: its scope must
be covered by what the presenting token holds, and it expires no later than any token it
came from. Delegation chains are limited in depth, and a delegated token names every token
it came from (``derived_from``), so that revoking any of them ends it.

The one exception is **renewal**: an agent's own (not delegated) token exchanged for the
*same task* may outlive it, so that a long task keeps going on short tokens. A renewal
still narrows the scope and keeps the key, and is bounded by ``max_session_lifetime``
counted from the runtime's last attestation (join or workload token): past it, the agent
must prove again where it runs. A renewal (and a re-scoping of an agent's own token) carries
the renewal ``family`` of the token presented (:mod:`tether.identity.claims`): revoking any
token of the family ends all of them, so a renewal of a stolen token ends with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from tether.identity.names import TASK_ID_TEXT, is_task_id

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
JOIN_TOKEN: Final = "urn:tether:params:oauth:token-type:join-token"  # noqa: S105
JWT: Final = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
ID_TOKEN: Final = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
SUBJECT_TYPES: Final = frozenset({JOIN_TOKEN, JWT, ACCESS_TOKEN, ID_TOKEN})
_MAX_FIELD: Final = 16384
_SECONDS: Final = re.compile(r"[0-9]{1,6}")
_PARAMETER_NAME: Final = re.compile(r"[a-z_]{1,40}")
_FIELDS: Final = frozenset(
    {
        "grant_type", "subject_token", "subject_token_type", "actor_token", "actor_token_type",
        "scope", "task_id", "task_purpose", "requested_lifetime", "resource", "audience",
        "requested_token_type",
    }
)  # fmt: skip


class ExchangeError(Exception):
    """An exchange refused; ``error`` is the RFC 6749/8693 error code (HTTP 400)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(f"{error}: {description}")


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """A validated token-exchange form."""

    subject_token: str
    subject_token_type: str
    actor_token: str | None
    actor_token_type: str | None
    scope: tuple[str, ...] | None
    task_id: str
    task_purpose: str
    lifetime: int | None


def parse_form(form: Mapping[str, str]) -> ExchangeRequest:
    """Validate the form of a token request; ``ExchangeError`` says what is wrong."""
    unknown = set(form) - _FIELDS
    if unknown:
        raise ExchangeError("invalid_request", f"unknown parameter(s): {parameter_names(unknown)}")
    for key, value in form.items():
        if len(value) > _MAX_FIELD:
            raise ExchangeError("invalid_request", f"{key} is too long")
    if form.get("grant_type") != GRANT_TYPE:
        raise ExchangeError("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
    subject, subject_type = form.get("subject_token"), form.get("subject_token_type")
    if not subject or subject_type not in SUBJECT_TYPES:
        raise ExchangeError("invalid_request", "subject_token and a known subject_token_type")
    actor, actor_type = form.get("actor_token") or None, form.get("actor_token_type") or None
    if (actor is None) != (actor_type is None):
        raise ExchangeError("invalid_request", "actor_token and actor_token_type go together")
    if actor_type not in (None, ACCESS_TOKEN):
        raise ExchangeError("invalid_request", "actor_token_type must be an access_token")
    if subject_type == ID_TOKEN and actor is None:
        raise ExchangeError("invalid_request", "a user's token needs the agent's actor_token")
    if subject_type != ID_TOKEN and actor is not None:
        raise ExchangeError("invalid_request", "actor_token is only for delegation (id_token)")
    task_id = form.get("task_id", "")
    if not is_task_id(task_id):
        raise ExchangeError("invalid_request", f"task_id is required: {TASK_ID_TEXT}")
    purpose = form.get("task_purpose") or "unspecified"
    if len(purpose) > 500 or not purpose.isprintable():
        raise ExchangeError("invalid_request", "task_purpose is printable text of ≤500 characters")
    if form.get("requested_token_type") not in (None, ACCESS_TOKEN):
        raise ExchangeError("invalid_request", "requested_token_type must be an access_token")
    return ExchangeRequest(
        subject_token=subject,
        subject_token_type=subject_type,
        actor_token=actor,
        actor_token_type=actor_type,
        scope=_scope(form.get("scope")),
        task_id=task_id,
        task_purpose=purpose,
        lifetime=_lifetime(form.get("requested_lifetime")),
    )


def is_parameter_name(name: str) -> bool:
    """Whether ``name`` is shaped like an OAuth parameter name (so may be told back)."""
    return _PARAMETER_NAME.fullmatch(name) is not None


def parameter_names(names: Iterable[str]) -> str:
    """Parameter names for a refusal's reason, which is audited and logged as a text Tether
    wrote: only names shaped like an OAuth parameter are told, the others counted, so a
    secret sent as a name (a join token, say) is never copied there."""
    unique = set(names)
    shown = sorted(n for n in unique if is_parameter_name(n))
    others = len(unique) - len(shown)
    if others:
        shown.append(f"{others} more not shown")
    return ", ".join(shown)


def _scope(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    parts = tuple(value.split())
    if not parts or any(not p.isprintable() for p in parts):
        raise ExchangeError("invalid_scope", "scope is a space-separated list of target globs")
    return parts


def _lifetime(value: str | None) -> int | None:
    if value is None:
        return None
    # ASCII digits only: ``str.isdigit`` also holds for superscripts, which ``int`` refuses.
    if not _SECONDS.fullmatch(value) or not 0 < int(value) <= 86400:
        raise ExchangeError("invalid_request", "requested_lifetime is a number of seconds")
    return int(value)
