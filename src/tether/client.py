"""The Python agent SDK: join Tether, hold a task token, and use it with DPoP handled.

::

    from tether.client import TetherClient

    with TetherClient("http://127.0.0.1:8765") as tether:
        session = tether.join(join_token, task_id="T-1", purpose="nightly report")
        print(session.claims["sub"], session.claims["scope"])
        session.request("GET", "/v1/whoami").json()
        certificate = session.ssh_certificate(public_key_line, ["deploy"])

A :class:`Session` holds an access token bound to an Ed25519 key that never leaves the
process (DPoP, RFC 9449): every request carries ``Authorization: DPoP <token>`` and a fresh
proof signed for its method and URL. The session renews its token by itself before it
expires (when less than 20% of its lifetime is left), by exchanging the token it holds for
a new one of the same task; :meth:`Session.for_task` exchanges it for a token of another
task, with a scope that can only narrow.

The URL given to :class:`TetherClient` must be the server's external URL, as the server
knows it (its ``identity.issuer``): proofs are signed for it.

Errors: :class:`TetherRefused` when the server refuses (its status, OAuth ``error`` code
and description); :class:`TetherUnavailable` when it cannot be reached.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.identity.dpop import make_proof

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
JOIN_TOKEN_TYPE: Final = "urn:tether:params:oauth:token-type:join-token"  # noqa: S105
JWT_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TOKEN_PATH: Final = "/oauth/token"  # noqa: S105 - a path
RENEW_WHEN_LEFT: Final = 0.2  # renew when less than this share of the lifetime is left


class TetherError(Exception):
    """Something went wrong talking to Tether."""


class TetherUnavailable(TetherError):
    """The Tether server could not be reached."""


class TetherRefused(TetherError):
    """The server refused: ``status``, the OAuth ``error`` code if any, and why."""

    def __init__(self, status: int, error: str | None, detail: str) -> None:
        super().__init__(f"{status} {error or 'refused'}: {detail}")
        self.status, self.error, self.detail = status, error, detail

    @classmethod
    def of(cls, response: httpx.Response) -> TetherRefused:
        try:
            body = response.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        detail = body.get("error_description") or body.get("detail") or response.reason_phrase
        return cls(response.status_code, body.get("error"), str(detail))


@dataclass(frozen=True)
class X509Credential:
    """A client certificate, its private key (PEM, unencrypted) and Tether's CA certificate."""

    private_key_pem: str
    certificate: str
    ca: str
    # With ``bind_token=True``: an access token bound to this certificate (RFC 8705), to
    # present over mutual TLS instead of DPoP.
    bound_token: str | None = None


def decode_claims(token: str) -> dict[str, Any]:
    """A JWT's payload, *not verified*: for display and timing, never for decisions."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as error:
        raise TetherError("the server answered a malformed token") from error
    if not isinstance(data, dict):
        raise TetherError("the server answered a malformed token")
    return data


class TetherClient:
    """A connection to one Tether server, for agents."""

    def __init__(
        self,
        server_url: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.http = http or httpx.Client(timeout=timeout)
        self.clock = clock

    def __enter__(self) -> TetherClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def url(self, path_or_url: str) -> str:
        """An absolute URL: a path is taken relative to the server."""
        return urljoin(self.server_url + "/", path_or_url)

    def join(
        self,
        join_token: str,
        *,
        task_id: str,
        purpose: str,
        scope: Iterable[str] | None = None,
        lifetime: int | None = None,
    ) -> Session:
        """Spend a one-time join token for a task token bound to a new Ed25519 key."""
        return self._start(join_token, JOIN_TOKEN_TYPE, task_id, purpose, scope, lifetime)

    def attest(
        self,
        workload_token: str,
        *,
        task_id: str,
        purpose: str,
        scope: Iterable[str] | None = None,
        lifetime: int | None = None,
    ) -> Session:
        """Present a workload token (Kubernetes, GitHub Actions, SPIFFE JWT-SVID) instead."""
        return self._start(workload_token, JWT_TYPE, task_id, purpose, scope, lifetime)

    def _start(
        self,
        subject: str,
        subject_type: str,
        task_id: str,
        purpose: str,
        scope: Iterable[str] | None,
        lifetime: int | None,
    ) -> Session:
        key = Ed25519PrivateKey.generate()
        form = _form(subject, subject_type, task_id, purpose, scope, lifetime)
        answer = self.exchange(form, key)
        return Session(self, key, answer["access_token"], task_id, purpose)

    def exchange(
        self, form: Mapping[str, str], key: Ed25519PrivateKey, access_token: str | None = None
    ) -> dict[str, Any]:
        """POST the token endpoint with a DPoP proof by ``key``; the token response."""
        url = self.url(TOKEN_PATH)
        proof = make_proof(key, "POST", url, now=self.clock(), access_token=access_token)
        response = self.send("POST", url, data=dict(form), headers={"DPoP": proof})
        answer: dict[str, Any] = response.json()
        return answer

    def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request; ``TetherUnavailable`` or ``TetherRefused`` unless it succeeded."""
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise TetherUnavailable(f"cannot reach Tether at {self.server_url}: {error}") from None
        if response.is_error:
            raise TetherRefused.of(response)
        return response


class Session:
    """A task token and its DPoP key; renews itself before the token expires."""

    def __init__(
        self, client: TetherClient, key: Ed25519PrivateKey, token: str, task_id: str, purpose: str
    ) -> None:
        self.client, self.key = client, key
        self.task_id, self.purpose = task_id, purpose
        self._lock = threading.Lock()
        self._set(token)

    def _set(self, token: str) -> None:
        self._token, self._claims = token, decode_claims(token)

    @property
    def token(self) -> str:
        """The current access token (renewed first when it is close to expiry)."""
        self._renew_if_due()
        return self._token

    @property
    def claims(self) -> dict[str, Any]:
        """The current token's claims, decoded but not verified (for display)."""
        return dict(self._claims)

    @property
    def expires_at(self) -> int:
        return int(self._claims["exp"])

    @property
    def scope(self) -> list[str]:
        return list(self._claims.get("scope", []))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """An HTTP request with ``Authorization: DPoP`` and a fresh proof for it.

        ``url`` is a path on the Tether server or an absolute URL. Refusals raise
        :class:`TetherRefused`.
        """
        target = self.client.url(url)
        token = self.token
        proof = make_proof(
            self.key, method.upper(), _without_query(target), now=self.client.clock(),
            access_token=token,
        )  # fmt: skip
        headers = {**kwargs.pop("headers", {}), "Authorization": f"DPoP {token}", "DPoP": proof}
        return self.client.send(method.upper(), target, headers=headers, **kwargs)

    def renew(self) -> None:
        """Exchange the current token for a new one of the same task, now."""
        with self._lock:
            self._exchange_into(self.task_id, self.purpose, None, None, replace=True)

    def for_task(
        self,
        task_id: str,
        purpose: str,
        scope: Iterable[str] | None = None,
        lifetime: int | None = None,
    ) -> Session:
        """A session for another task, same key, scope within this one's."""
        with self._lock:
            token = self._exchange_into(task_id, purpose, scope, lifetime, replace=False)
        return Session(self.client, self.key, token, task_id, purpose)

    def _exchange_into(
        self,
        task_id: str,
        purpose: str,
        scope: Iterable[str] | None,
        lifetime: int | None,
        *,
        replace: bool,
    ) -> str:
        form = _form(self._token, ACCESS_TOKEN_TYPE, task_id, purpose, scope, lifetime)
        answer = self.client.exchange(form, self.key, access_token=self._token)
        token: str = answer["access_token"]
        if replace:
            self._set(token)
        return token

    def _renew_if_due(self) -> None:
        lifetime = self._claims["exp"] - self._claims["iat"]
        if self._claims["exp"] - self.client.clock() >= RENEW_WHEN_LEFT * lifetime:
            return
        with self._lock:
            if self._claims["exp"] - self.client.clock() < RENEW_WHEN_LEFT * lifetime:
                self._exchange_into(self.task_id, self.purpose, None, None, replace=True)

    def whoami(self) -> dict[str, Any]:
        """The claims as the server verified them."""
        answer: dict[str, Any] = self.request("GET", "/v1/whoami").json()
        return answer

    def ssh_certificate(self, public_key: str, principals: Iterable[str]) -> str:
        """An OpenSSH user certificate for ``public_key`` (one ``authorized_keys`` line)."""
        body = {"public_key": public_key, "principals": list(principals)}
        certificate: str = self.request("POST", "/v1/certificates/ssh", json=body).json()[
            "certificate"
        ]
        return certificate

    def request_access(
        self,
        target: str,
        action: Mapping[str, Any] | None = None,
        *,
        rule: str | None = None,
        reason: str | None = None,
        wait: float = 0.0,
    ) -> dict[str, Any]:
        """Ask a human ahead for an ``action`` of the policy contract on ``target`` (or a
        whole ``rule`` with ``approval.scope: rule``) within this task.

        Answers the access request (``status`` ``pending``, ``approved``, ``denied``...),
        or ``{"status": "not-needed"}`` when the policy allows the action already; with
        ``wait``, waits up to that many seconds (at most 60) for the decision. A policy
        deny raises :class:`TetherRefused` (403).
        """
        body: dict[str, Any] = {"target": target, "reason": reason}
        if action is not None:
            body["action"] = dict(action)
        if rule is not None:
            body["rule"] = rule
        response = self.request("POST", "/v1/access-requests", json=body)
        if not response.is_success:
            raise TetherRefused.of(response)
        answer: dict[str, Any] = response.json()
        if wait > 0 and answer.get("status") == "pending":
            answer = self.access_request(answer["id"], wait=wait)
        return answer

    def access_request(self, request_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """One of this agent's access requests; ``wait`` long-polls for its decision."""
        response = self.request(
            "GET", f"/v1/access-requests/{request_id}", params={"wait": min(wait, 60.0)},
            timeout=wait + 30,
        )  # fmt: skip
        if not response.is_success:
            raise TetherRefused.of(response)
        answer: dict[str, Any] = response.json()
        return answer

    def x509_certificate(self, *, bind_token: bool = False) -> X509Credential:
        """A new P-256 key and a short-lived client certificate (SPIFFE ID) for it;
        with ``bind_token``, also an access token bound to the certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        body: dict[str, Any] = {
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "bind_token": bind_token,
        }
        answer = self.request("POST", "/v1/certificates/x509", json=body).json()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        bound = answer.get("access_token", {}).get("access_token") if bind_token else None
        return X509Credential(pem, answer["certificate"], answer["ca"], bound)


def _form(
    subject: str,
    subject_type: str,
    task_id: str,
    purpose: str,
    scope: Iterable[str] | None,
    lifetime: int | None,
) -> dict[str, str]:
    form = {
        "grant_type": GRANT_TYPE,
        "subject_token": subject,
        "subject_token_type": subject_type,
        "task_id": task_id,
        "task_purpose": purpose,
    }
    if scope is not None:
        form["scope"] = " ".join(scope)
    if lifetime is not None:
        form["requested_lifetime"] = str(lifetime)
    return form


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
