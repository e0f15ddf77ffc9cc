"""Certificates for an agent's own keys, under a verified access token.

An SSH user certificate (Tether's agent-login CA) and an X.509 client certificate (SPIFFE
ID ``spiffe://<trust domain>/agent/<agent>``) live at most ``certificate_lifetime`` and
never past the token they were issued under; the SSH key id names the agent, the task and
the token id (``agent=<a> task=<t> jti=<j>``, ids shaped by :mod:`tether.identity.names`).
This module signs and describes; the service checks the token is live first and records
what was issued.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import asyncssh
from cryptography import x509

from tether.identity.claims import Claims
from tether.identity.errors import TokenInvalid
from tether.identity.issued import IdentitySettings, credential_record
from tether.identity.keystore import TetherKeys
from tether.identity.sshca import SshCaError, describe_certificate, format_key_id
from tether.store.credentials import Credential


class CertificateIssuer:
    """Signs certificates with the node's CAs; ``IssuanceError`` for refused requests."""

    def __init__(
        self, keys: TetherKeys, settings: IdentitySettings, clock: Callable[[], datetime]
    ) -> None:
        self.keys, self.settings, self.clock = keys, settings, clock

    def ssh(
        self, claims: Claims, public_key: str, principals: Sequence[str], source: str | None
    ) -> tuple[str, Credential]:
        """An OpenSSH certificate line, and its record."""
        now, validity = self._validity(claims)
        key_id = format_key_id(agent=claims.agent_id, task=claims.task.id, jti=claims.jti)
        certificate = self.keys.ssh_user_ca.issue(
            public_key,
            principals=list(principals),
            key_id=key_id,
            validity_seconds=validity,
            source_address=[source] if source else None,
        )
        serial = str(describe_certificate(certificate).serial)
        try:
            fingerprint = asyncssh.import_public_key(public_key.strip()).get_fingerprint("sha256")
        except (asyncssh.KeyImportError, ValueError):  # the CA parsed it: cannot happen
            raise SshCaError("malformed public key") from None
        record = credential_record(
            claims, "ssh_certificate", key_thumbprint=fingerprint, serial=serial,
            validity=(now, now + validity),
        )  # fmt: skip
        return certificate, record

    def x509(self, claims: Claims, csr_pem: str) -> tuple[str, Credential]:
        """A PEM client certificate for the CSR's key, and its record."""
        now, validity = self._validity(claims)
        spiffe = f"spiffe://{self.settings.trust_domain}/agent/{claims.agent_id}"
        pem = self.keys.x509_ca.issue(csr_pem, spiffe_id=spiffe, validity_seconds=validity)
        serial = format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")
        record = credential_record(
            claims, "x509_certificate", key_thumbprint=None, serial=serial,
            validity=(now, now + validity),
        )  # fmt: skip
        return pem, record

    def _validity(self, claims: Claims) -> tuple[int, int]:
        """(now, seconds): a certificate lives as long as its token at most."""
        now = int(self.clock().timestamp())
        validity = min(self.settings.certificate_lifetime, claims.exp - now)
        if validity <= 0:
            raise TokenInvalid("the token has expired")
        return now, validity
