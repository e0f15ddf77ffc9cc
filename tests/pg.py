"""A real PostgreSQL server on 127.0.0.1 for the tests, from the installed Debian binaries.

``PostgresServer.start()`` finds ``initdb``/``pg_ctl`` (on ``PATH``, else the newest
``/usr/lib/postgresql/*/bin``), creates a cluster in a fresh temporary directory and starts it
on a free loopback port, with its Unix socket inside that directory. It is tuned for tests
(no fsync, small buffers): durability is worthless here, speed is not.

* Running as root (CI), the server runs as an unprivileged user, since ``initdb`` and
  ``postgres`` refuse root: Debian's ``postgres`` user if it exists, else a system user
  ``tether-test`` created on first use. The temporary directory is handed to that user.
* TCP logins need the superuser's password (SCRAM), so other local users cannot use the
  server; the Unix socket, in a directory only the server user (and root) can enter,
  trusts its peers and serves the fixtures' own ``psql`` calls.
* Missing binaries raise :class:`PostgresUnavailable` naming the package to install, and a
  server that does not come up raises it with the tail of the server log: the fixtures turn
  both into test failures, never skips.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "tether"
FALLBACK_USER = "tether-test"
DEBIAN_BIN_DIRS = Path("/usr/lib/postgresql")
START_TIMEOUT = 60
_SAFE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "unix_socket_permissions": "0700",
    "log_min_messages": "warning",
}


class PostgresUnavailable(RuntimeError):
    """The test PostgreSQL server cannot be found or started; the message says why."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (and the matching ``psql``)."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        resolved = Path(initdb).resolve().parent  # Debian's PATH entries are symlinks
        return resolved if (resolved / "pg_ctl").exists() else Path(initdb).parent
    installed = [
        d
        for d in DEBIAN_BIN_DIRS.glob("*/bin")
        if (d / "initdb").exists() and (d / "pg_ctl").exists()
    ]
    if not installed:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) are not on PATH nor in "
            f"{DEBIAN_BIN_DIRS}/*/bin: install the Debian package `postgresql` (.ci/run does)"
        )
    return max(installed, key=_major_version)


def _major_version(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name)) or (0,)


def server_user() -> str | None:
    """The user to run the server as: None unless we are root, who may not run it."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    created = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode not in (0, 9):  # 9: created meanwhile by a parallel run
        raise PostgresUnavailable(f"cannot create user {FALLBACK_USER}: {created.stderr.strip()}")
    return FALLBACK_USER


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """A running test cluster; ``startup_seconds`` is how long ``start`` took."""

    bin_dir: Path
    root: Path
    user: str | None
    password: str
    port: int = 0
    version_num: int = 0
    startup_seconds: float = 0.0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @classmethod
    def start(cls) -> PostgresServer:
        """Create and start a cluster; the caller must :meth:`stop` it."""
        began = time.monotonic()
        bin_dir = find_bin_dir()
        user = server_user()
        # Under /tmp when root: the server user must be able to reach its directory.
        root = Path(tempfile.mkdtemp(prefix="tether-pg-", dir="/tmp" if user else None))
        server = cls(bin_dir, root, user, password=secrets.token_urlsafe(24))
        try:
            server._init_cluster()
            server._start_listening()
        except BaseException:
            server.stop()
            raise
        server.startup_seconds = time.monotonic() - began
        return server

    def url(self, database: str) -> str:
        """The SQLAlchemy asyncpg URL of ``database`` over TCP on loopback."""
        return f"postgresql+asyncpg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        """An empty database (from ``template0``, so nothing leaks in from ``template1``)."""
        # FILE_COPY (PostgreSQL 15+) copies the few template files instead of WAL-logging
        # every block: several times faster, and durability does not matter here.
        strategy = " STRATEGY FILE_COPY" if self.version_num >= 150000 else ""
        self.psql(f'CREATE DATABASE "{_checked(name)}" TEMPLATE template0{strategy}')

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing any connection a test left open."""
        self.psql(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)')

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the Unix socket; its output, or an error."""
        args = [
            str(self._psql_path()),
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER,
            "-d", database, "-c", sql,
        ]  # fmt: skip
        done = self._run(args, as_server=False, timeout=60)
        if done.returncode != 0:
            raise PostgresUnavailable(f"psql {sql!r} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        try:
            if (self.data_dir / "postmaster.pid").exists():
                pg_ctl = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w"]
                stopped = self._run([*pg_ctl, "-m", "fast", "stop"], timeout=60)
                if stopped.returncode != 0:
                    self._run([*pg_ctl, "-m", "immediate", "stop"], timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _init_cluster(self) -> None:
        self.root.chmod(0o700)
        self.socket_dir.mkdir(mode=0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        args = [
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        ]  # fmt: skip
        done = self._run(args, timeout=120)
        pwfile.unlink()
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {(done.stderr or done.stdout).strip()}")

    def _start_listening(self) -> None:
        """Start on a free port; another process may take the port first, so retry."""
        for _attempt in range(5):
            self.port = free_port()
            options = " ".join(
                [f"-p {self.port}", f"-k {self.socket_dir}"]
                + [f"-c {key}={value}" for key, value in _SERVER_SETTINGS.items()]
            )
            args = [
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                "-w", "-t", str(START_TIMEOUT), "-o", options, "start",
            ]  # fmt: skip
            if self._run(args, timeout=START_TIMEOUT + 30).returncode == 0:
                # Ready for the fixtures' own connections too.
                self.version_num = int(self.psql("SHOW server_version_num"))
                return
            if "could not bind" not in self._log_tail():
                break
        raise PostgresUnavailable(
            f"PostgreSQL did not start within {START_TIMEOUT}s; server log:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no server log)"

    def _psql_path(self) -> Path:
        here = self.bin_dir / "psql"
        found = here if here.exists() else shutil.which("psql")
        if found is None:
            raise PostgresUnavailable("psql not found: install the Debian package `postgresql`")
        return Path(found)

    def _run(
        self, args: list[str], *, as_server: bool = True, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program, as the server user for the server's own programs."""
        program = Path(args[0]).name
        if as_server and self.user is not None:
            args = ["runuser", "-u", self.user, "--", *args]
        # PG* variables of the caller's environment must not redirect the test server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            return subprocess.run(
                args, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise PostgresUnavailable(f"{program} timed out after {timeout}s") from None


def _checked(name: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"not a safe database name: {name!r}")
    return name
