"""A real OpenSSH ``sshd`` on 127.0.0.1 for tests, and the real ``ssh`` client to log in to it.

Kept apart from any test so a later SSH-broker issue can move it to a shared place.

The daemon runs with its own configuration directory (host key, ``TrustedUserCAKeys``,
``AuthorizedPrincipalsFile``) and ``AuthorizedKeysFile none``, so only a certificate signed by a
trusted CA and naming a listed principal logs in. It logs in as the user running the tests: as
root in CI (``PermitRootLogin prohibit-password`` allows certificate logins and nothing else), as
that user elsewhere (a non-root ``sshd`` can only log in its own user, which is all we need).
Running as root, ``sshd`` needs its privilege-separation directory ``/run/sshd``; the fixture
creates it when missing, as the Debian service would.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

SSHD = Path("/usr/sbin/sshd")
_START_TIMEOUT = 15.0


def openssh_available() -> bool:
    """True when both the OpenSSH server and client are installed."""
    return SSHD.exists() and shutil.which("ssh") is not None


@dataclass
class Sshd:
    """A running ``sshd``; ``log`` collects its stderr lines as they come."""

    port: int
    user: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def ssh(
        self, key: Path, cert: Path | None, command: str = "echo ok"
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` through the real OpenSSH client with only ``key`` (and ``cert``)."""
        args = [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]
        if cert is not None:
            args += ["-o", f"CertificateFile={cert}"]
        args += [f"{self.user}@127.0.0.1", command]
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        return subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)

    def mark(self) -> int:
        """A position in the log, for :meth:`wait_for_log` to search only what comes after."""
        with self._changed:
            return len(self.log)

    def wait_for_log(self, pattern: str, since: int = 0, timeout: float = 10.0) -> str:
        """The first log line after ``since`` matching ``pattern``, waiting for it if need be."""
        regex = re.compile(pattern)
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((line for line in self.log[since:] if regex.search(line)), None),
                timeout,
            )
        assert found, f"sshd never logged {pattern!r}; log:\n" + "\n".join(self.log)
        return found

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.log.append(line.rstrip("\n"))
                self._changed.notify_all()


def write_key_pair(directory: Path, name: str, algorithm: str = "ssh-ed25519") -> tuple[Path, str]:
    """A new private key file (mode 0600, as ``ssh`` demands) and its public key line."""
    key = asyncssh.generate_private_key(algorithm)
    path = directory / name
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    return path, key.export_public_key("openssh").decode().strip()


@contextmanager
def running_sshd(
    directory: Path,
    *,
    trusted_ca_keys: list[str],
    principals: list[str],
    authorized_keys: list[str] | None = None,
    extra_config: str = "",
) -> Iterator[Sshd]:
    """Start ``sshd -D -e`` on a free loopback port; stop it on exit.

    ``authorized_keys`` (plain public key lines) are accepted too when given;
    ``extra_config`` lines are appended to the configuration (``ForceCommand`` ...).
    """
    directory.mkdir(parents=True, exist_ok=True)
    host_key, _ = write_key_pair(directory, "host_ed25519")
    (directory / "trusted_ca.pub").write_text("\n".join(trusted_ca_keys) + "\n")
    (directory / "principals").write_text("\n".join(principals) + "\n")
    keys_file = "none"
    if authorized_keys is not None:
        (directory / "authorized_keys").write_text("\n".join(authorized_keys) + "\n")
        keys_file = str(directory / "authorized_keys")
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\n"
        f"HostKey {host_key}\n"
        f"PidFile {directory / 'sshd.pid'}\n"
        f"TrustedUserCAKeys {directory / 'trusted_ca.pub'}\n"
        f"AuthorizedPrincipalsFile {directory / 'principals'}\n"
        f"AuthorizedKeysFile {keys_file}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "LogLevel VERBOSE\n" + extra_config
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    process = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Sshd(port=port, user=getpass.getuser(), process=process)
    threading.Thread(target=server._pump, daemon=True).start()
    try:
        server.wait_for_log(rf"Server listening on 127\.0\.0\.1 port {port}", 0, _START_TIMEOUT)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
