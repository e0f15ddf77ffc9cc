"""The master key: 32 random bytes under which every secret Tether stores is wrapped.

Where it comes from, in order:

1. ``TETHER_MASTER_KEY``, when set: 32 bytes written as base64url (43 characters, the
   standard ``+/`` alphabet and ``=`` padding are accepted too) or as hex (64 characters).
   Any other value is an error that says what was expected and never echoes the value.
   Production deployments inject it from their secret manager, so the key never sits on
   the same disk as the database it protects.
2. ``<data_dir>/master.key``, created on first start when absent. This is the single
   place in ``tether.crypto`` that does file I/O.

Security decisions:

* **A readable key file is refused, not fixed.** An existing file whose mode grants any
  permission to group or others (``mode & 0o077``) is an error naming the file and the
  ``chmod`` to run. Silently tightening it would hide that the key may already have been
  read. The mode is checked with ``fstat`` on the descriptor that is then read, so the
  file checked is the file read. Symbolic links are followed (Kubernetes mounts secrets
  through them), and a link to a missing file is an error rather than a reason to generate
  a new key (which would write nothing there and leave the stored secrets unreadable on the
  next start with the mount in place); the owner is not checked, because containers often
  run under a UID that differs from the file's owner while the mode still says who can
  read it.
* **Creation is atomic and never clobbers.** The key is written to a temporary 0600 file
  in the same directory, flushed, then hard-linked to ``master.key``. ``link`` fails when
  the name exists, so two nodes starting at once on one data directory agree on the first
  key written, and nobody ever reads a half-written file. The directory is fsynced: losing
  the key after a crash would make every stored secret unreadable.
* **The key never appears in a repr, a message or a log.** ``MasterKey`` hides its bytes
  and exposes ``key_id``, a one-way fingerprint (HKDF output, not a hash of the key) that
  ciphertexts record, so a wrong key is reported as such instead of as tampering.
* **Key separation.** Consumers do not use the master key directly: ``derive(info)``
  gives an independent key per purpose (HKDF-SHA256, RFC 5869).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_ENV: Final = "TETHER_MASTER_KEY"
MASTER_KEY_FILE: Final = "master.key"
KEY_SIZE: Final = 32

_HEX: Final = re.compile(r"[0-9A-Fa-f]{64}")
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_B64STD: Final = re.compile(r"[A-Za-z0-9+/]{43}")
_MAX_FILE_BYTES: Final = 1024
_KEY_ID_INFO: Final = b"tether/master-key/id"


class MasterKeyError(Exception):
    """The master key cannot be used; the message names its source and the fix."""


@dataclass(frozen=True)
class MasterKey:
    """The 32-byte master key and where it came from; its bytes never show in a repr."""

    material: bytes = field(repr=False)
    source: str

    def __post_init__(self) -> None:
        if len(self.material) != KEY_SIZE:
            raise MasterKeyError(f"{self.source}: the master key must be {KEY_SIZE} bytes")

    def derive(self, info: bytes, length: int = KEY_SIZE) -> bytes:
        """An independent key for one purpose (HKDF-SHA256 with ``info`` as the label)."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
            self.material
        )

    @property
    def key_id(self) -> bytes:
        """An 8-byte fingerprint of the key, safe to store next to what it encrypts."""
        return self.derive(_KEY_ID_INFO, 8)


def generate_master_key_text() -> str:
    """A new random master key, written as base64url (what ``TETHER_MASTER_KEY`` takes)."""
    return _encode(secrets.token_bytes(KEY_SIZE))


def parse_master_key(text: str, *, source: str) -> bytes:
    """The 32 bytes written in ``text`` (base64url, base64 or hex); ``source`` names it."""
    value = text.strip()
    if not value:
        raise MasterKeyError(f"{source} is empty: expected a 32-byte key")
    if _HEX.fullmatch(value):
        return bytes.fromhex(value)
    unpadded = value[:-1] if value.endswith("=") else value
    if _B64URL.fullmatch(unpadded) or _B64STD.fullmatch(unpadded):
        raw = _decode(unpadded.replace("+", "-").replace("/", "_"))
        if raw is not None:
            return raw
    raise MasterKeyError(
        f"{source} is not a 32-byte key: expected 43 base64url characters or 64 hex "
        f"characters (got {len(value)} characters); generate one with "
        '`python -c "import secrets; print(secrets.token_urlsafe(32))"`'
    )


def load_master_key(data_dir: Path, *, environ: Mapping[str, str] | None = None) -> MasterKey:
    """The master key from ``TETHER_MASTER_KEY``, else from ``<data_dir>/master.key``.

    The file is created (mode 0600, with ``data_dir`` as 0700 if missing) on first use.
    Raises ``MasterKeyError`` with the reason and the fix.
    """
    env = os.environ if environ is None else environ
    if MASTER_KEY_ENV in env:
        source = f"environment variable {MASTER_KEY_ENV}"
        return MasterKey(parse_master_key(env[MASTER_KEY_ENV], source=source), source=source)
    path = data_dir / MASTER_KEY_FILE
    try:
        return read_master_key_file(path)
    except FileNotFoundError:
        if path.is_symlink():  # a secret mount that is not there: never a key of our own
            raise MasterKeyError(
                f"{path} is a symbolic link to a missing file ({path.readlink()}); "
                "mount the master key there, or remove the link to have a key generated"
            ) from None
        return _create_key_file(path)


def next_master_key(path: Path) -> MasterKey:
    """The key in ``path``, created (mode 0600) when absent: the next key of a rotation
    (``tether store rekey``). An existing file is read as any key file, so that a rotation
    interrupted after its transaction committed is finished with the same key."""
    try:
        return read_master_key_file(path)
    except FileNotFoundError:
        return _create_key_file(path)


def install_master_key(new: Path, data_dir: Path) -> Path:
    """Put the key file ``new`` in place of ``<data_dir>/master.key`` (an atomic rename, the
    directory fsynced): the old key is gone. Returns the path replaced."""
    path = data_dir / MASTER_KEY_FILE
    try:
        new.replace(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise MasterKeyError(f"{path}: cannot replace the master key file: {exc}") from exc
    return path


def read_master_key_file(path: Path) -> MasterKey:
    """Read a key file, refusing one that group or others may access.

    Raises ``FileNotFoundError`` when it does not exist, ``MasterKeyError`` otherwise.
    """
    # O_NONBLOCK: a FIFO put there would block the open until a writer came; this way it
    # opens at once and is refused as not a regular file.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise MasterKeyError(f"{path}: cannot read the master key file: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"{path}: the master key file is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise MasterKeyError(
                f"{path}: mode {mode:04o} lets group or others access the master key; "
                f"refusing to use it (run `chmod 600 {path}` once you have checked who "
                "could read it)"
            )
        data = os.read(fd, _MAX_FILE_BYTES)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise MasterKeyError(f"{path} is not a text key file") from None
    return MasterKey(parse_master_key(text, source=str(path)), source=str(path))


def _create_key_file(path: Path) -> MasterKey:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        _write_private(tmp, (generate_master_key_text() + "\n").encode("ascii"))
        try:
            os.link(tmp, path)  # atomic, and fails if another process won the race
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise MasterKeyError(f"{path}: cannot create the master key file: {exc}") from exc
    return read_master_key_file(path)


def _write_private(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Refuse non-canonical spellings (stray low bits in the last character): a key
    # has exactly one written form, so two different strings never name the same key.
    return raw if len(raw) == KEY_SIZE and _encode(raw) == text else None
