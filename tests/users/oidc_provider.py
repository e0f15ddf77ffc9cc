"""A small but real OIDC provider for the tests: discovery, JWKS, an authorization endpoint
that signs in a chosen user at once, and a token endpoint that checks the client secret,
the redirect URI and the PKCE verifier (S256) and spends each code once."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

CLIENT_ID = "tether-cli"
CLIENT_SECRET = "provider-client-secret"


FORM_FIELD = re.compile(r"name='(state|confirm)' value='([^']*)'")


async def confirm_in(browser: httpx.AsyncClient, page: httpx.Response) -> httpx.Response:
    """The person at the browser presses Confirm on the callback's page."""
    action = re.search(r"action='([^']*)'", page.text)
    assert action is not None, page.text
    fields = {name: html.unescape(value) for name, value in FORM_FIELD.findall(page.text)}
    return await browser.post(html.unescape(action.group(1)), data=fields)


@dataclass
class Provider:
    issuer: str
    clock: Callable[[], datetime]
    user: str = "alice"
    groups: list[str] = field(default_factory=lambda: ["sre", "tether-admins"])
    nonce_override: str | None = None
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    token_requests: int = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, answer, extra = self.route(scope["path"], query, headers, body)
        content = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        out = [(b"content-type", b"application/json"), *extra]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": content})

    def route(
        self, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        if path == "/.well-known/openid-configuration":
            return 200, self.discovery(), []
        if path == "/jwks":
            jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
            return 200, {"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "ES256"}]}, []
        if path == "/authorize":
            return self.authorize(query)
        if path == "/token":
            return self.token({k: v[0] for k, v in parse_qs(body.decode()).items()}, headers)
        return 404, {"error": "not_found"}, []

    def discovery(self) -> dict[str, str]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
        }

    def authorize(self, query: dict[str, str]) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        if query.get("client_id") != CLIENT_ID or query.get("code_challenge_method") != "S256":
            return 400, {"error": "invalid_request"}, []
        code = secrets.token_urlsafe(16)
        self.codes[code] = {k: query[k] for k in ("code_challenge", "nonce", "redirect_uri")}
        location = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
        return 302, b"", [(b"location", location.encode())]

    def token(
        self, form: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        self.token_requests += 1
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return 401, {"error": "invalid_client"}, []
        grant = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if (
            grant is None
            or challenge != grant["code_challenge"]
            or form.get("redirect_uri") != grant["redirect_uri"]
        ):
            return 400, {"error": "invalid_grant"}, []
        now = int(self.clock().timestamp())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": f"id-{self.user}",
            "preferred_username": self.user,
            "groups": self.groups,
            "nonce": self.nonce_override or grant["nonce"],
            "iat": now,
            "exp": now + 300,
        }
        id_token = jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "idp-1"})
        return 200, {"id_token": id_token, "access_token": "unused", "token_type": "Bearer"}, []
