"""Tether's SSH user certificate authorities.

Tether runs two SSH user CAs, one class with a ``purpose`` each:

* ``agent-login``: signs the short-lived certificate an agent presents to Tether's own SSH
  front-end. Only Tether trusts this CA.
* ``target-session``: signs the per-session certificate Tether presents to a target host, whose
  ``sshd`` lists this CA in ``TrustedUserCAKeys``.

The two purposes must never share a key: a target that trusted the agent-login CA would let an
agent holding its certificate log in to the target directly, around every policy check. Keys that
Tether generates carry their purpose in the key comment and loading one for the other purpose is
refused (a key brought from elsewhere, with another comment, is accepted as is).

Every certificate is short-lived (capped per purpose), names its principals explicitly (an
empty principal list means "any user" to OpenSSH), carries a random serial (so a KRL can revoke it)
and a key id naming the agent, the task and the token id (``sshd`` logs it on every login). Every
permission extension is off unless asked for; ``permit-user-rc`` is always off, so a
``~/.ssh/rc`` on the far side never runs before the command policy allowed.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate
from cryptography.hazmat.primitives.asymmetric import rsa

from tether.identity.errors import IssuanceError

Clock = Callable[[], datetime]

#: ``valid_after`` is set this far before "now": a target whose clock runs a little behind Tether's
#: would otherwise refuse a certificate issued a second ago as "not yet valid". One minute covers
#: NTP-synchronised hosts without widening the window in any meaningful way.
BACKDATE_SECONDS = 60

#: Longest validity per purpose. An agent-login certificate lives at most as long as the task's
#: access token; a target-session certificate is checked by ``sshd`` only at authentication, so
#: it need only outlive the dial.
MAX_VALIDITY_SECONDS = {"agent-login": 3600, "target-session": 600}

#: Public key algorithms accepted for certification. DSA (1024-bit, SHA-1) is refused outright;
#: Ed448 is refused because OpenSSH does not implement it.
ACCEPTED_KEY_ALGORITHMS = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
MIN_RSA_BITS = 2048
#: RSA keys above this size cost the CA and every verifier for nothing; OpenSSH caps at 16384.
MAX_RSA_BITS = 8192
_MAX_KEY_LINE = 16_384
_MAX_PRINCIPALS = 32
_MAX_KEY_ID = 256
_COMMENT_PREFIX = "tether-ssh-ca:"

# A principal is a login name: no comma (OpenSSH separates principals with it), no white space,
# no control character, and no leading '-' (it would read as an option on some command lines).
_PRINCIPAL = re.compile(r"[A-Za-z0-9_.@+][A-Za-z0-9_.@+-]{0,63}")
# Key id fields are logged by sshd: printable, no space or '=' so "k=v k=v" stays unambiguous.
_KEY_ID_VALUE = re.compile(r"[A-Za-z0-9._:@/+-]{1,128}")


class CaPurpose(StrEnum):
    """What a CA's certificates are for; see the module docstring."""

    AGENT_LOGIN = "agent-login"
    TARGET_SESSION = "target-session"


class SshCaError(IssuanceError):
    """A certificate request or a CA key was refused; ``reason`` says why, for the caller."""

    code = "ssh_ca_refused"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def format_key_id(*, agent: str, task: str, jti: str) -> str:
    """The key id Tether writes into a certificate: ``agent=<a> task=<t> jti=<j>``."""
    for name, value in (("agent", agent), ("task", task), ("jti", jti)):
        if not _KEY_ID_VALUE.fullmatch(value):
            raise SshCaError(f"key id field {name} has characters outside [A-Za-z0-9._:@/+-]")
    return f"agent={agent} task={task} jti={jti}"


@dataclass(frozen=True, slots=True)
class SshUserCA:
    """An SSH user CA: signs short-lived OpenSSH user certificates.

    ``ca_private_key`` is an asyncssh private key; use :meth:`generate` or
    :meth:`from_private_key_bytes` to build one. ``clock`` returns an aware UTC datetime.
    """

    ca_private_key: asyncssh.SSHKey = field(repr=False)
    clock: Clock = field(repr=False)
    purpose: CaPurpose = CaPurpose.AGENT_LOGIN

    def __post_init__(self) -> None:
        _check_key_algorithm(self.ca_private_key)
        comment = self.ca_private_key.get_comment() or ""
        if comment.startswith(_COMMENT_PREFIX) and comment != _comment_for(self.purpose):
            raise SshCaError(
                f"this CA key was generated for {comment.removeprefix(_COMMENT_PREFIX)!r}, "
                f"not {self.purpose.value!r}: the two CAs must not share a key"
            )

    @classmethod
    def generate(cls, *, clock: Clock, purpose: CaPurpose = CaPurpose.AGENT_LOGIN) -> SshUserCA:
        """A CA with a fresh Ed25519 key (small, fast, deterministic signatures)."""
        key = asyncssh.generate_private_key("ssh-ed25519", comment=_comment_for(purpose))
        return cls(key, clock, purpose)

    @classmethod
    def from_private_key_bytes(
        cls, data: bytes, *, clock: Clock, purpose: CaPurpose = CaPurpose.AGENT_LOGIN
    ) -> SshUserCA:
        """Load a CA key written by :meth:`private_key_bytes` (or any unencrypted OpenSSH key)."""
        try:
            key = asyncssh.import_private_key(data)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise SshCaError(f"CA private key does not load: {exc}") from None
        return cls(key, clock, purpose)

    def private_key_bytes(self) -> bytes:
        """The CA private key in OpenSSH format, unencrypted: the caller encrypts it at rest."""
        return self.ca_private_key.export_private_key("openssh")

    def ca_public_key_openssh(self) -> str:
        """One ``authorized_keys``-style line, for ``TrustedUserCAKeys`` on a target."""
        return self.ca_private_key.export_public_key("openssh").decode("ascii").strip()

    def issue(
        self,
        public_key_openssh: str,
        *,
        principals: Sequence[str],
        key_id: str,
        validity_seconds: int,
        source_address: Sequence[str] | None = None,
        allow_pty: bool = True,
        allow_port_forwarding: bool = False,
        allow_agent_forwarding: bool = False,
        allow_x11: bool = False,
    ) -> str:
        """Sign ``public_key_openssh`` and return the OpenSSH certificate line.

        ``source_address`` is a list of CIDR blocks; ``None`` leaves the certificate usable from
        anywhere (the front-end then relies on the proof-of-possession token alone).
        """
        user_key = _parse_user_key(public_key_openssh)
        if user_key.public_data == self.ca_private_key.public_data:
            raise SshCaError("refusing to certify the CA's own key")
        now = int(self.clock().timestamp())
        cert = self.ca_private_key.generate_user_certificate(
            user_key,
            _check_key_id(key_id),
            serial=secrets.randbelow(2**64 - 1) + 1,  # random, non-zero: a KRL can name it
            principals=_check_principals(principals),
            valid_after=now - BACKDATE_SECONDS,
            valid_before=now + self._check_validity(validity_seconds),
            source_address=_check_source_address(source_address),
            permit_x11_forwarding=allow_x11,
            permit_agent_forwarding=allow_agent_forwarding,
            permit_port_forwarding=allow_port_forwarding,
            permit_pty=allow_pty,
            permit_user_rc=False,
            comment=None,
        )
        return cert.export_certificate("openssh").decode("ascii").strip()

    def _check_validity(self, seconds: int) -> int:
        cap = MAX_VALIDITY_SECONDS[self.purpose.value]
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 < seconds <= cap:
            raise SshCaError(f"validity_seconds must be an integer in 1..{cap} for {self.purpose}")
        return seconds


def _comment_for(purpose: CaPurpose) -> str:
    return _COMMENT_PREFIX + purpose.value


def _check_key_algorithm(key: asyncssh.SSHKey) -> None:
    """Refuse DSA, Ed448 and RSA outside MIN_RSA_BITS..MAX_RSA_BITS."""
    algorithm = key.get_algorithm()
    if algorithm not in ACCEPTED_KEY_ALGORITHMS:
        raise SshCaError(f"key algorithm {algorithm} is not accepted")
    pyca = key.pyca_key
    if isinstance(pyca, rsa.RSAPublicKey | rsa.RSAPrivateKey) and not (
        MIN_RSA_BITS <= pyca.key_size <= MAX_RSA_BITS
    ):
        raise SshCaError(
            f"RSA key of {pyca.key_size} bits refused: {MIN_RSA_BITS}..{MAX_RSA_BITS} required"
        )


def _parse_user_key(line: str) -> asyncssh.SSHKey:
    """One OpenSSH public key line (a certificate or a private key is refused)."""
    if not isinstance(line, str) or len(line) > _MAX_KEY_LINE or not line.isascii():
        raise SshCaError("public key must be one OpenSSH public key line")
    if "\n" in line.strip() or "PRIVATE KEY" in line:
        raise SshCaError("public key must be one OpenSSH public key line")
    try:
        key = asyncssh.import_public_key(line.strip())
    except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
        raise SshCaError(f"malformed public key: {exc}") from None
    _check_key_algorithm(key)
    return key


def _check_principals(principals: Sequence[str]) -> list[str]:
    if isinstance(principals, str) or not 0 < len(principals) <= _MAX_PRINCIPALS:
        raise SshCaError(f"principals must be a list of 1..{_MAX_PRINCIPALS} names")
    for name in principals:
        if not isinstance(name, str) or not _PRINCIPAL.fullmatch(name):
            raise SshCaError(f"principal {name!r} is not a valid login name")
    return list(principals)


def _check_key_id(key_id: str) -> str:
    printable = all(" " <= ch <= "~" for ch in key_id) if isinstance(key_id, str) else False
    if not printable or not 0 < len(key_id) <= _MAX_KEY_ID or key_id != key_id.strip():
        raise SshCaError(f"key id must be 1..{_MAX_KEY_ID} printable ASCII characters")
    return key_id


def _check_source_address(cidrs: Sequence[str] | None) -> list[str] | None:
    """CIDR blocks, host bits clear; an empty list is refused rather than guessed at."""
    if cidrs is None:
        return None
    if isinstance(cidrs, str) or not cidrs:
        raise SshCaError("source_address must be None or a non-empty list of CIDR blocks")
    try:
        return [str(ipaddress.ip_network(c, strict=True)) for c in cidrs]
    except (ValueError, TypeError) as exc:
        raise SshCaError(f"bad source_address: {exc}") from None


@dataclass(frozen=True, slots=True)
class SshCertInfo:
    """What an OpenSSH certificate says, for audit and for checking what was issued."""

    key_id: str
    serial: int
    cert_type: int  # 1 user, 2 host
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    critical_options: dict[str, str]
    extensions: tuple[str, ...]
    signing_ca: str  # SHA256 fingerprint of the CA key


def describe_certificate(line: str) -> SshCertInfo:
    """Parse and signature-check one OpenSSH certificate line (not its trust or validity)."""
    try:
        cert = asyncssh.import_certificate(line.strip())
    except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
        raise SshCaError(f"malformed certificate: {exc}") from None
    if not isinstance(cert, SSHOpenSSHCertificate):
        raise SshCaError("not an OpenSSH certificate")
    reader = _Reader(cert.public_data)
    reader.string()  # certificate algorithm
    reader.string()  # nonce
    key_blob = cert.key.public_data
    reader.skip(len(key_blob) - 4 - struct.unpack(">I", key_blob[:4])[0])
    serial, cert_type = reader.uint64(), reader.uint32()
    key_id = reader.string().decode("utf-8", "replace")
    principals = _Reader(reader.string())
    after, before = reader.uint64(), reader.uint64()
    critical, extensions = _Reader(reader.string()), _Reader(reader.string())
    return SshCertInfo(
        key_id=key_id,
        serial=serial,
        cert_type=cert_type,
        principals=tuple(p.decode("utf-8", "replace") for p in principals.strings()),
        valid_after=_from_timestamp(after),
        valid_before=_from_timestamp(before),
        critical_options=_decode_critical(critical),
        extensions=tuple(n.decode("ascii", "replace") for n in extensions.strings()[::2]),
        signing_ca=cert.signing_key.get_fingerprint("sha256"),
    )


def _from_timestamp(value: int) -> datetime:
    return datetime.fromtimestamp(min(value, 253402300799), UTC)  # "forever" is 2**64-1


def _decode_critical(reader: _Reader) -> dict[str, str]:
    items = reader.strings()
    return {
        name.decode("ascii", "replace"): _Reader(data).string().decode("utf-8", "replace")
        for name, data in zip(items[::2], items[1::2], strict=True)
    }


class _Reader:
    """SSH wire format reader for the fields asyncssh has already bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def skip(self, n: int) -> None:
        self._pos += n

    def uint32(self) -> int:
        (value,) = struct.unpack_from(">I", self._data, self._pos)
        self._pos += 4
        return int(value)

    def uint64(self) -> int:
        (value,) = struct.unpack_from(">Q", self._data, self._pos)
        self._pos += 8
        return int(value)

    def string(self) -> bytes:
        size = self.uint32()
        value = self._data[self._pos : self._pos + size]
        self._pos += size
        return value

    def strings(self) -> list[bytes]:
        out = []
        while self._pos < len(self._data):
            out.append(self.string())
        return out
