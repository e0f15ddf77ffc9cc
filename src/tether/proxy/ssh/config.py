"""The ``ssh`` section of the configuration: Tether's SSH and SFTP broker, validated at load.

Every key is documented in docs/ssh-broker.md and docs/configuration.md. This module needs only
pydantic at import time (``tether.config`` imports it for every command).

Security decisions:

* **Off unless configured.** ``enabled`` defaults to false: a node opens no SSH port until the
  operator asks for one (``examples/tether.yaml`` turns it on, on loopback).
* **Certificates only.** ``allow_plain_keys`` defaults to false: an agent logs in with the
  short-lived OpenSSH certificate Tether issued. When turned on, a bare public key is accepted
  only if Tether certified that very key and the certificate is still live (its record in the
  store); passwords and keyboard-interactive are never accepted.
* **Bounded.** Logins that do not finish within ``login_timeout`` are dropped, idle
  connections after ``idle_timeout``, and at most ``max_sessions`` connections are served at
  once (more are refused at the TCP accept, before any cryptography).
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


CIPHERS = frozenset(
    {
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
        "aes192-ctr",
        "aes256-ctr",
    }
)


def _check_ciphers(value: list[str]) -> list[str]:
    unknown = [name for name in value if name not in CIPHERS]
    if unknown:
        raise ValueError(f"unknown or refused cipher(s) {unknown}; choose from {sorted(CIPHERS)}")
    return value


RETENTION_MIN: Final = 86400  # a day: the recordings of the last day may be still open


def _check_retention(value: int) -> int:
    if 0 < value < RETENTION_MIN:
        raise ValueError(f"0 (keep every recording) or at least {RETENTION_MIN} seconds (a day)")
    return value


class SshRecordingConfig(BaseModel):
    """How shell and exec sessions are recorded (asciicast v2, see docs/recordings.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_input: bool = False
    max_output_bytes: Annotated[int, Field(ge=0)] | None = 64 * 1024 * 1024
    # Seconds a day of recordings is kept after it ended; 0 keeps them all (the default).
    retention: Annotated[int, Field(ge=0, le=100 * 366 * 86400),
                         AfterValidator(_check_retention)] = 0  # fmt: skip


class SshConfig(BaseModel):
    """Every key of the ``ssh`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:2222"
    # The broker's own host key, relative to data_dir; generated (Ed25519, 0600) at first start.
    host_key: str = Field(default="ssh_host_ed25519_key", min_length=1, max_length=255)
    allow_plain_keys: bool = False
    login_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    idle_timeout: Annotated[float, Field(ge=0, le=86400)] = 3600.0  # 0: no idle timeout
    max_sessions: Annotated[int, Field(ge=1, le=100_000)] = 1000
    live_check_interval: Annotated[float, Field(gt=0, le=1.0)] = 0.5
    # SSH channel tuning (bytes): receive window and largest packet, both directions.
    window: Annotated[int, Field(ge=65536, le=1 << 30)] = 8 * 1024 * 1024
    max_packet: Annotated[int, Field(ge=4096, le=262144)] = 262144
    # SFTP client side (to the target): bytes per request and requests in flight per transfer.
    sftp_block_size: Annotated[int, Field(ge=4096, le=261120)] = 261120
    sftp_max_requests: Annotated[int, Field(ge=1, le=1024)] = 128
    # Ciphers offered to agents, in order. AES-GCM only by default: asyncssh's AES-GCM
    # (OpenSSL) runs ~3x faster than its ChaCha20-Poly1305, and every OpenSSH since 6.2 has it.
    ciphers: Annotated[list[str], Field(min_length=1), AfterValidator(_check_ciphers)] = Field(
        default_factory=lambda: ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    )
    recording: SshRecordingConfig = Field(default_factory=SshRecordingConfig)

    @property
    def host(self) -> str:
        host = self.listen.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])
