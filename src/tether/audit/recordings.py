"""Session recordings: terminals and exec output as asciicast v2, transfers as records.

One session leaves up to three files in ``<root>/YYYY/MM/DD/`` (the UTC day it started)::

    <session>.cast.gz          asciicast v2, gzip; written event by event
    <session>.transfers.jsonl  one JSON record per file transfer (path, direction, size, sha256)
    <session>.json             the summary, written once when the recording is closed

The cast is an asciicast v2 stream: a header line (``version``, ``width``, ``height``,
``timestamp``, ``title``, ``env`` and Tether's own ``tether`` object, which players ignore),
then one ``[seconds, code, data]`` line per event: ``"o"`` output, ``"i"`` input, ``"r"``
resize (``"WxH"``), ``"m"`` marker.

Security and durability decisions:

* **A crash leaves a readable prefix.** Every event is followed by a zlib *sync flush* and a
  write to the file, so the bytes on disk always decompress up to the last whole event;
  :mod:`tether.audit.recordings_read` reads such a truncated gzip without its trailer.
  The summary file is missing for such a recording, which marks it incomplete.
* **Keystrokes are not recorded by default.** Terminal input holds what the echo hides —
  passwords typed at a ``sudo`` or ``passwd`` prompt — and secrets must never land in a
  recording. ``RecordingOptions.record_input`` turns it on for deployments that want it.
* **Exec output is capped** (``max_output_bytes``): past the cap output is dropped, the
  recording says ``truncated`` and a marker event shows where. A runaway command cannot fill
  the disk through its recording. Input and resize events have a budget of the same size
  (an agent can send window changes without end), cut and marked the same way.
* **Never overwritten, private.** Files are created exclusively (``O_EXCL``) with mode 0600
  in 0700 directories: a second recording under the same session id is refused rather than
  replacing the first, and other local users cannot read what the terminal showed.
* **Session ids are file names**, so they are checked against :data:`SESSION_ID_PATTERN`
  (no ``/``, no leading dot) before any path is built from them.
* **Bound to the audit trail.** The recorder hashes the cast file's bytes as it writes
  them; :meth:`Recorder.close` puts the SHA-256 in the summary and returns it, and the
  front-end puts it in the session's audit event (the SSH broker's ``ssh.command``
  ``detail.recording``), which the hash chain protects. A recording changed afterwards no
  longer matches it: ``tether sessions show`` says so.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from tether.durable import replace_file

CAST_SUFFIX: Final = ".cast.gz"
TRANSFERS_SUFFIX: Final = ".transfers.jsonl"
SUMMARY_SUFFIX: Final = ".json"
SESSION_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
# Only these variables of the client's environment are kept in the header (as asciinema does):
# anything else may hold a secret.
KEPT_ENV: Final = frozenset({"TERM", "SHELL"})
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700

Direction = Literal["upload", "download"]


class RecordingError(Exception):
    """A recording cannot be started, written or found; the message says which and why."""


def check_session_id(session_id: str) -> str:
    """``session_id`` if it is safe as a file name, else :class:`RecordingError`."""
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise RecordingError(f"invalid session id {session_id!r}")
    return session_id


def session_of(recording_id: str) -> str:
    """The session a recording belongs to: an SSH channel's ``<session>.<n>`` is the
    session's; any other recording is its session's own."""
    return recording_id.rpartition(".")[0] or recording_id


def day_dir(root: Path, started: datetime) -> Path:
    """``root/YYYY/MM/DD`` for the UTC day of ``started``."""
    day = started.astimezone(UTC)
    return root / f"{day.year:04d}" / f"{day.month:02d}" / f"{day.day:02d}"


@dataclass(frozen=True, slots=True)
class RecordingMeta:
    """What is known of a session when its recording starts."""

    width: int = 80
    height: int = 24
    title: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    protocol: str = "ssh"
    agent: str | None = None
    runtime: str | None = None
    task: str | None = None
    user: str | None = None
    target: str | None = None
    command: str | None = None  # an exec session's command; None for a shell


@dataclass(frozen=True, slots=True)
class RecordingOptions:
    """How recordings are made: see the module docstring for why these defaults."""

    record_input: bool = False
    max_output_bytes: int | None = None  # None: no cap


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """One file that went through a session."""

    time: float  # seconds since the recording started
    path: str
    direction: Direction
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    """The summary file of a closed recording."""

    session_id: str
    started_at: str  # ISO 8601, UTC
    ended_at: str
    duration: float
    output_bytes: int
    truncated: bool
    transfers: int
    exit_status: int | None
    meta: dict[str, Any]
    cast_sha256: str  # of the .cast.gz file's bytes, as closed
    cast_bytes: int


def cast_header(meta: RecordingMeta, session_id: str, started: datetime) -> dict[str, Any]:
    """The asciicast v2 header line for a session starting at ``started``."""
    header: dict[str, Any] = {
        "version": 2,
        "width": meta.width,
        "height": meta.height,
        "timestamp": int(started.timestamp()),
        "env": {k: v for k, v in sorted(meta.env.items()) if k in KEPT_ENV},
    }
    header["title"] = meta.title if meta.title is not None else f"tether session {session_id}"
    if meta.command is not None:
        header["command"] = meta.command
    header["tether"] = {"session_id": session_id, **_meta_fields(meta)}
    return header


def _meta_fields(meta: RecordingMeta) -> dict[str, Any]:
    fields = asdict(meta)
    for key in ("width", "height", "title", "env"):
        fields.pop(key)
    return {k: v for k, v in fields.items() if v is not None}


class Recorder:
    """Records one session; create with :meth:`start`, finish with :meth:`close`.

    Not thread-safe; each method does a little blocking file I/O (compression and one
    ``write``), no ``fsync`` until :meth:`close`.
    """

    def __init__(
        self,
        session_id: str,
        directory: Path,
        cast: gzip.GzipFile,
        raw: Any,
        options: RecordingOptions,
        started: datetime,
        monotonic: Callable[[], float],
        meta: RecordingMeta,
    ) -> None:
        self.session_id = session_id
        self.directory = directory
        self.options = options
        self.started = started
        self.meta = meta
        self.output_bytes = 0
        self.truncated = False
        self.other_bytes = 0  # input and resize events, bounded by the same cap
        self._others_cut = False
        self.transfer_count = 0
        self._cast = cast
        self._raw = raw
        self._monotonic = monotonic
        self._t0 = monotonic()
        self._decoders = {
            code: codecs.getincrementaldecoder("utf-8")(errors="replace") for code in "oi"
        }
        self._closed = False
        self._failed: str | None = None  # why writing failed, once it did

    @classmethod
    def start(
        cls,
        session_id: str,
        meta: RecordingMeta,
        *,
        root: Path,
        options: RecordingOptions | None = None,
        now: datetime | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> Recorder:
        """Create the session's cast file and write its header; raises :class:`RecordingError`."""
        check_session_id(session_id)
        started = (now or datetime.now(UTC)).astimezone(UTC)
        directory = day_dir(root, started)
        path = directory / f"{session_id}{CAST_SUFFIX}"
        try:
            _make_private_dirs(directory)
            raw = _create_exclusive(path, "wb")
        except FileExistsError:
            raise RecordingError(f"a recording of session {session_id} exists already") from None
        except OSError as error:
            raise RecordingError(f"cannot create {path}: {error.strerror or error}") from None
        raw = _HashingFile(raw)
        cast = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        recorder = cls(
            session_id, directory, cast, raw, options or RecordingOptions(), started, monotonic,
            meta,
        )  # fmt: skip
        try:
            recorder._write_line(cast_header(meta, session_id, started))
        except RecordingError:
            with contextlib.suppress(OSError):
                raw.close()
            raise
        return recorder

    @property
    def cast_path(self) -> Path:
        return self.directory / f"{self.session_id}{CAST_SUFFIX}"

    def output(self, data: bytes | str) -> None:
        """Terminal or exec output, up to ``max_output_bytes`` in all."""
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
        cap = self.options.max_output_bytes
        if cap is not None:
            if self.truncated:
                return
            room = cap - self.output_bytes
            if len(raw) > room:
                self._output_chunk(raw[:room])
                self.truncated = True
                self._event("m", f"output truncated at {cap} bytes")
                return
        self._output_chunk(raw)

    def _output_chunk(self, raw: bytes) -> None:
        self.output_bytes += len(raw)
        text = self._decoders["o"].decode(raw)
        if text:
            self._event("o", text)

    def input(self, data: bytes | str) -> None:
        """Keystrokes: dropped unless ``record_input`` (they may hold a hidden password)."""
        if not self.options.record_input:
            return
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
        text = self._decoders["i"].decode(raw)
        if text and self._room_for_other(len(raw)):
            self._event("i", text)

    def resize(self, width: int, height: int) -> None:
        """The terminal changed size."""
        size = f"{int(width)}x{int(height)}"
        if self._room_for_other(len(size)):
            self._event("r", size)

    def _room_for_other(self, size: int) -> bool:
        """Whether an input or resize event of ``size`` bytes fits under the cap, which
        bounds these too: an agent sending window changes without end must not fill the
        disk any more than one printing without end. Past it, one marker says so."""
        cap = self.options.max_output_bytes
        if cap is None:
            return True
        if self._others_cut:
            return False
        if self.other_bytes + size > cap:
            self._others_cut = True
            self._event("m", f"input and resize events truncated at {cap} bytes")
            return False
        self.other_bytes += size
        return True

    def marker(self, label: str) -> None:
        """A named point in the recording (asciicast ``"m"``)."""
        self._event("m", label)

    def transfer(self, path: str, direction: Direction, size: int, sha256: str) -> None:
        """A file that went through the session, appended to the transfers file at once."""
        if direction not in ("upload", "download"):
            raise ValueError(f"direction must be upload or download, not {direction!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        record = TransferRecord(round(self._elapsed(), 6), path, direction, size, sha256)
        line = json.dumps(asdict(record), ensure_ascii=False) + "\n"
        target = self.directory / f"{self.session_id}{TRANSFERS_SUFFIX}"
        try:
            with _open_append(target) as handle:
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise self._failure(error) from None
        self.transfer_count += 1

    def close(self, exit_status: int | None = None) -> RecordingSummary:
        """Finish the cast (gzip trailer, fsync) and write the summary file. Raises
        :class:`RecordingError` when that fails, or when an earlier write did (the file is
        closed all the same; what was written stays, without a summary)."""
        if self._closed:
            raise RecordingError(f"recording of session {self.session_id} is closed")
        duration = self._elapsed()
        try:
            tail = self._decoders["o"].decode(b"", final=True)
            if tail:
                self._event("o", tail)
            self._closed = True
            if self._failed is not None:
                raise RecordingError(self._failed)
            try:
                self._cast.close()
                self._raw.flush()
                os.fsync(self._raw.fileno())
                summary = self._summary(duration, exit_status)
                _write_atomically(
                    self.directory / f"{self.session_id}{SUMMARY_SUFFIX}",
                    json.dumps(asdict(summary), indent=2, sort_keys=True) + "\n",
                )
            except OSError as error:
                raise self._failure(error) from None
        finally:
            self._closed = True
            with contextlib.suppress(OSError):
                self._raw.close()
        return summary

    def _summary(self, duration: float, exit_status: int | None) -> RecordingSummary:
        ended = self.started.timestamp() + duration
        return RecordingSummary(
            session_id=self.session_id,
            started_at=self.started.isoformat(),
            ended_at=datetime.fromtimestamp(ended, UTC).isoformat(),
            duration=round(duration, 6),
            output_bytes=self.output_bytes,
            truncated=self.truncated or self._others_cut,
            transfers=self.transfer_count,
            exit_status=exit_status,
            meta=_meta_fields(self.meta),
            cast_sha256=self._raw.sha256.hexdigest(),
            cast_bytes=self._raw.size,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            self.close()

    def _elapsed(self) -> float:
        return max(0.0, self._monotonic() - self._t0)

    def _event(self, code: str, data: str) -> None:
        self._write_line([round(self._elapsed(), 6), code, data])

    def _write_line(self, value: object) -> None:
        if self._closed:
            raise RecordingError(f"recording of session {self.session_id} is closed")
        if self._failed is not None:
            raise RecordingError(self._failed)
        line = json.dumps(value, ensure_ascii=False, separators=(", ", ": ")) + "\n"
        try:
            self._cast.write(line.encode("utf-8", "replace"))
            # Sync flush: the bytes so far become a decodable gzip prefix (module docstring).
            self._cast.flush()
            self._raw.flush()
        except OSError as error:
            raise self._failure(error) from None

    def _failure(self, error: OSError) -> RecordingError:
        """The error to raise for a failed write; every later write fails the same way (the
        gzip stream is in an unknown state after a short write)."""
        self._failed = (
            f"recording of session {self.session_id} could not be written: "
            f"{error.strerror or error}"
        )
        return RecordingError(self._failed)


class _HashingFile:
    """The cast file, hashing every byte written to it (the gzip stream, trailer included)."""

    def __init__(self, raw: Any) -> None:
        self._file = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        written: int = self._file.write(data)
        return written

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        fileno: int = self._file.fileno()
        return fileno

    def close(self) -> None:
        self._file.close()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _make_private_dirs(directory: Path) -> None:
    """``directory`` and its missing parents, each created 0700: ``mkdir(parents=True)``
    would give the mode to the last one only, the others the umask's (0755)."""
    missing = []
    for path in (directory, *directory.parents):
        if path.is_dir():
            break
        missing.append(path)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another recorder made it meanwhile
            path.mkdir(mode=_DIR_MODE)


def _create_exclusive(path: Path, mode: Literal["wb"]) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    # Held while the recorder writes (until the file is closed): how a prune, in this
    # process or another, tells a session still being written from one long quiet.
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return os.fdopen(fd, mode)


def being_written(cast: Path) -> bool:
    """Whether a recorder still holds ``cast`` open (its lock, taken at creation)."""
    try:
        fd = os.open(cast, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock taken, if any
    return False


def _open_append(path: Path) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, _FILE_MODE)
    return os.fdopen(fd, "ab")


def _write_atomically(path: Path, text: str) -> None:
    replace_file(path, text.encode("utf-8"), mode=_FILE_MODE)
