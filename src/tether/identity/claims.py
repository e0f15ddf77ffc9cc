"""The claims of a Tether access token, as typed frozen values, and their JSON form.

A token's payload (RFC 9068 profile plus Tether's own claims)::

    iss, aud, sub, jti        strings; sub is the agent id, or the user id when delegated
    iat, nbf, exp             integers (UNIX seconds)
    task     {"id", "purpose"}
    scope    ["target-glob", ...]
    runtime  {"id", "labels": {name: value}}
    cnf      {"jkt": thumbprint} (DPoP, RFC 9449)  or  {"x5t#S256": hash} (mTLS, RFC 8705)
    act      {"sub", "act": {...}}   optional, RFC 8693 actor chain (delegation)
    agent    "agent-id"              optional, present when sub is a user
    groups   ["group", ...]          optional: the delegating user's (``sub``'s) groups
    act_groups  [{"sub", "groups"}, ...]  optional: a delegation chain's other users (those
                                     in ``act``, outermost first, the agent excluded) with
                                     the groups their ID tokens gave
    parent_jti  "jti"                optional: a certificate-bound token names the token it
                                     was issued from; revoking that token ends this one
    derived_from  ["jti", ...]       optional: every token this one was derived from
                                     (delegation, re-scoping of a delegated token,
                                     certificate binding), nearest first; revoking any of
                                     them ends this one
    family  "jti"                    optional: the renewal family, the jti of the first
                                     token of the chain of exchanges of an agent's own
                                     token (renewals, re-scopings) this one belongs to
                                     (its own jti when it starts one); revoking any token
                                     of the family ends every token of it

Security decisions:

* **Exactly one binding.** ``cnf`` must hold exactly one of ``jkt`` and ``x5t#S256``;
  a token without proof-of-possession binding cannot be built, issued or accepted, so
  a stolen token alone is useless (DESIGN invariant 3).
* **Types are checked, not coerced.** Dates are integers (``bool`` is not), strings are
  non-empty strings, lists hold strings; anything else is ``TokenInvalid`` naming the
  claim. ``aud`` is a single string: Tether is the only issuer, so the array form is
  not accepted either.
* **Unknown claims are ignored** (a newer node may add some during a rolling upgrade),
  while unknown *header* members are refused by the verifier; the payload is only read
  after its signature verified.
* Actor chains are at most ``MAX_ACTOR_DEPTH`` deep, ``derived_from`` at most
  ``MAX_DERIVED_FROM`` long: the revocation check of every use looks each entry up once.
* **A renewal chain is one family, revoked as a whole.** An agent's own token exchanged
  for a renewal or another task (:mod:`tether.identity.grants`) does not grow
  ``derived_from`` (a long task renews without bound); the new token carries the
  ``family`` of the token presented instead, one string however long the chain. Revoking
  any token of a family revokes the family's first token, whose jti is the family
  (:meth:`tether.identity.service.IdentityService.revoke`), so the one set lookup of
  ``family`` among revoked token ids ends every renewal, older or newer, of a stolen token:
  a thief who renewed it and the agent share the family, and the agent joins again.
  A delegated or certificate-bound token starts a family of its own and names the family
  of the token it came from in ``derived_from`` (:attr:`Claims.lineage`), as it names that
  token. A token issued before ``family`` existed has none: it is revoked by its jti as
  before, and a renewal of it made since starts the family at its jti.
* **A delegation chain names every user.** ``act`` follows RFC 8693 section 4.1: the actor
  of a delegation is whoever the actor token names, its ``sub`` with that token's own
  ``act`` nested inside. A delegated token used as the actor of a further delegation thus
  puts its user in the new token's ``act``, and the innermost ``act`` is always the agent
  (:attr:`Claims.delegators`).
* **Every user of a chain is decided with their own groups.** RFC 8693 section 4.1 makes
  the nested actors of ``act`` informational only ("not to be considered in access control
  decisions"), so the groups of the chain's earlier users are a top-level Tether claim,
  ``act_groups``, not members of ``act``: one entry per user of ``act`` in the same order,
  checked against ``act`` (a claim that names other users, or in another order, is
  ``TokenInvalid``). A chained token issued before the claim existed has none: its earlier
  users then count as users *without groups* (:attr:`Claims.delegation_users`), which a
  policy can only allow less, never more (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from tether.identity.errors import TokenInvalid

MAX_ACTOR_DEPTH: Final = 8
MAX_DERIVED_FROM: Final = 32


@dataclass(frozen=True)
class Task:
    """The task a token was issued for."""

    id: str
    purpose: str


@dataclass(frozen=True)
class Runtime:
    """The attested runtime the agent runs in."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Claims are shared through the verification cache: make them truly read-only.
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))


@dataclass(frozen=True)
class Confirmation:
    """The ``cnf`` claim: exactly one of a DPoP key thumbprint or a certificate hash."""

    jkt: str | None = None
    x5t_s256: str | None = None

    def __post_init__(self) -> None:
        if (self.jkt is None) == (self.x5t_s256 is None):
            raise ValueError("cnf needs exactly one of jkt and x5t#S256")
        if not (self.jkt or self.x5t_s256):
            raise ValueError("cnf binding is empty")

    def to_json(self) -> dict[str, str]:
        """The JSON object of the claim."""
        return {"jkt": self.jkt} if self.jkt is not None else {"x5t#S256": str(self.x5t_s256)}


@dataclass(frozen=True)
class Actor:
    """An RFC 8693 ``act`` claim: who acts for the subject, and who acted for them."""

    sub: str
    act: Actor | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the claim (nested for chains)."""
        doc: dict[str, Any] = {"sub": self.sub}
        if self.act is not None:
            doc["act"] = self.act.to_json()
        return doc


@dataclass(frozen=True)
class Delegator:
    """One user of a delegation and the groups their ID token gave when they delegated."""

    sub: str
    groups: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON object of an ``act_groups`` entry."""
        return {"sub": self.sub, "groups": list(self.groups)}


@dataclass(frozen=True)
class Claims:
    """The verified (or just issued) claims of an access token."""

    iss: str
    aud: str
    sub: str
    jti: str
    iat: int
    nbf: int
    exp: int
    task: Task
    scope: tuple[str, ...]
    runtime: Runtime
    cnf: Confirmation
    act: Actor | None = None
    agent: str | None = None
    groups: tuple[str, ...] = ()  # the delegating user's groups (delegated tokens only)
    parent_jti: str | None = None  # certificate-bound tokens: the token they were issued from
    derived_from: tuple[str, ...] = ()  # every token this one came from, nearest first
    family: str | None = None  # the jti of its renewal chain's first token (None: older)
    act_groups: tuple[Delegator, ...] = ()  # the chain's other users with their groups

    @property
    def agent_id(self) -> str:
        """The agent acting: ``agent`` for a delegated token, else ``sub``."""
        return self.agent if self.agent is not None else self.sub

    @property
    def delegators(self) -> tuple[str, ...]:
        """The users of a delegated token's chain, the subject first (empty when not
        delegated): ``sub`` and every actor but the innermost, which is the agent."""
        if self.act is None:
            return ()
        users = [self.sub]
        actor = self.act
        while actor.act is not None:
            users.append(actor.sub)
            actor = actor.act
        return tuple(users)

    @property
    def delegation_users(self) -> tuple[Delegator, ...]:
        """Every user of a delegated token with their groups, the subject first (as
        :attr:`delegators`; empty when not delegated). The users of a chain whose token
        carries no ``act_groups`` (issued before it existed) get no groups: fail closed."""
        users = self.delegators
        if not users:
            return ()
        first = Delegator(self.sub, self.groups)
        if len(users) == 1:
            return (first,)
        if tuple(d.sub for d in self.act_groups) == users[1:]:
            return (first, *self.act_groups)
        return (first, *(Delegator(user) for user in users[1:]))

    @property
    def lineage(self) -> tuple[str, ...]:
        """This token's jti and every token it came from, its family last: what a token
        derived from this one records as ``derived_from``, so that revoking any of them, or
        any token of this one's renewal family, ends it too."""
        older = () if self.parent_jti is None else (self.parent_jti,)
        family = () if self.family is None else (self.family,)
        return tuple(dict.fromkeys((self.jti, *older, *self.derived_from, *family)))

    def to_json(self) -> dict[str, Any]:
        """The payload as signed."""
        doc: dict[str, Any] = {
            "iss": self.iss,
            "aud": self.aud,
            "sub": self.sub,
            "jti": self.jti,
            "iat": self.iat,
            "nbf": self.nbf,
            "exp": self.exp,
            "task": {"id": self.task.id, "purpose": self.task.purpose},
            "scope": list(self.scope),
            "runtime": {"id": self.runtime.id, "labels": dict(self.runtime.labels)},
            "cnf": self.cnf.to_json(),
        }
        if self.act is not None:
            doc["act"] = self.act.to_json()
        if self.agent is not None:
            doc["agent"] = self.agent
        if self.groups:
            doc["groups"] = list(self.groups)
        if self.parent_jti is not None:
            doc["parent_jti"] = self.parent_jti
        if self.derived_from:
            doc["derived_from"] = list(self.derived_from)
        if self.family is not None:
            doc["family"] = self.family
        if self.act_groups:
            doc["act_groups"] = [d.to_json() for d in self.act_groups]
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Claims:
        """Claims from a verified payload; ``TokenInvalid`` naming the first bad claim."""
        task, runtime = _object(doc, "task"), _object(doc, "runtime")
        act = doc.get("act")
        claims = cls(
            iss=_string(doc, "iss"),
            aud=_string(doc, "aud"),
            sub=_string(doc, "sub"),
            jti=_string(doc, "jti"),
            iat=_date(doc, "iat"),
            nbf=_date(doc, "nbf"),
            exp=_date(doc, "exp"),
            task=Task(_string(task, "id", "task.id"), _string(task, "purpose", "task.purpose")),
            scope=_strings(doc.get("scope"), "scope"),
            runtime=Runtime(_string(runtime, "id", "runtime.id"), _labels(runtime.get("labels"))),
            cnf=_confirmation(doc.get("cnf")),
            act=None if act is None else _actor(act, 1),
            agent=None if doc.get("agent") is None else _string(doc, "agent"),
            groups=() if doc.get("groups") is None else _strings(doc.get("groups"), "groups"),
            parent_jti=None if doc.get("parent_jti") is None else _string(doc, "parent_jti"),
            derived_from=_derived_from(doc.get("derived_from")),
            family=None if doc.get("family") is None else _string(doc, "family"),
            act_groups=_act_groups(doc.get("act_groups")),
        )
        if claims.act_groups and not act_groups_match(claims.act, claims.act_groups):
            raise TokenInvalid("claim act_groups does not match the act chain")
        return claims


def _object(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise TokenInvalid(f"claim {name} missing or not an object")
    return value


def _string(doc: Mapping[str, Any], key: str, name: str | None = None) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise TokenInvalid(f"claim {name or key} missing or not a string")
    return value


def _date(doc: Mapping[str, Any], name: str) -> int:
    value = doc.get(name)
    if type(value) is not int:
        raise TokenInvalid(f"claim {name} missing or not an integer")
    return value


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TokenInvalid(f"claim {name} is not a list of strings")
    return tuple(value)


def _derived_from(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    jtis = _strings(value, "derived_from")
    if len(jtis) > MAX_DERIVED_FROM:
        raise TokenInvalid("claim derived_from is too long")
    return jtis


def _act_groups(value: object) -> tuple[Delegator, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ACTOR_DEPTH:
        raise TokenInvalid("claim act_groups is not a list of users")
    entries: list[Delegator] = []
    for entry in value:
        if not isinstance(entry, dict) or entry.keys() != {"sub", "groups"}:
            raise TokenInvalid("claim act_groups is not a list of {sub, groups}")
        sub = _string(entry, "sub", "act_groups.sub")
        entries.append(Delegator(sub, _strings(entry["groups"], "act_groups.groups")))
    return tuple(entries)


def act_groups_match(act: Actor | None, act_groups: Sequence[Delegator]) -> bool:
    """Whether ``act_groups`` names exactly the users of ``act`` (every actor but the
    innermost, the agent), in order."""
    users: list[str] = []
    actor = act
    while actor is not None and actor.act is not None:
        users.append(actor.sub)
        actor = actor.act
    return tuple(d.sub for d in act_groups) == tuple(users)


def _labels(value: object) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise TokenInvalid("claim runtime.labels is not an object of strings")
    return value


def _confirmation(value: object) -> Confirmation:
    if not isinstance(value, dict) or len(value) != 1:
        raise TokenInvalid("claim cnf must hold exactly one binding")
    jkt, x5t = value.get("jkt"), value.get("x5t#S256")
    if not isinstance(jkt, str | None) or not isinstance(x5t, str | None):
        raise TokenInvalid("claim cnf binding is not a string")
    try:
        return Confirmation(jkt=jkt, x5t_s256=x5t)
    except ValueError:
        raise TokenInvalid("claim cnf must hold exactly one binding") from None


def _actor(value: object, depth: int) -> Actor:
    if depth > MAX_ACTOR_DEPTH or not isinstance(value, dict):
        raise TokenInvalid("claim act is not an actor chain")
    inner = value.get("act")
    return Actor(
        _string(value, "sub", "act.sub"), None if inner is None else _actor(inner, depth + 1)
    )


def validate_new(
    subject: str, task: Task, scope: Sequence[str], runtime: Runtime, agent: str | None
) -> None:
    """``ValueError`` if values handed to the issuer would not survive ``from_json``."""
    names = [subject, task.id, task.purpose, runtime.id] + ([] if agent is None else [agent])
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError("subject, task, runtime and agent ids must be non-empty strings")
    if isinstance(scope, str) or not all(isinstance(s, str) and s for s in scope):
        raise ValueError("scope must be a sequence of non-empty strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in runtime.labels.items()):
        raise ValueError("runtime labels must map strings to strings")
