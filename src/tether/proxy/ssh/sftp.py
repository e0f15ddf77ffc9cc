"""The SFTP subsystem: Tether is the SFTP server to the agent and an SFTP client to the target.

Every operation is decided (spec 5.5) on the absolute path it names
(:mod:`tether.proxy.ssh.sftp_paths`) before anything reaches the target:

==================  ===========================================================
SFTP request        decided as
==================  ===========================================================
open                ``read`` (read flag, or no write flag: the target then opens
                    the file for reading) and/or ``write`` (write, append, create,
                    truncate flags): every one needed must be allowed
opendir, readlink,  ``list``
statvfs
stat, lstat         ``read``, ``write`` or ``list`` (metadata of a path the agent
                    may use in any way); only the deciding one is audited
setstat, lsetstat,  ``write``
mkdir
remove, rmdir       ``delete``
rename,             ``rename`` (``delete`` on the source, ``write`` on the target)
posix-rename
symlink, link       always refused: a link would give a path the policy allowed a
                    meaning it did not see
realpath            answered here, lexically; touches no file
==================  ===========================================================

``opendir`` of ``dir/`` is decided as ``dir`` (``sftp``'s ``ls`` sends the slash; only a
directory can be listed, so both name the same thing). On a handle: ``read`` and ``write``
were decided at ``open`` (a read on a handle not decided for reading, or a write on one
not decided for writing, is refused); ``fsetstat`` needs a handle opened for writing;
``lsetstat`` reaches the target as ``lsetstat`` (it does not follow a link). A refusal is
``SSH_FX_PERMISSION_DENIED`` with the ``Tether: ...`` reason. Each file closed after data
went through is audited with ``file_transfer`` (op ``read`` and/or ``write``, one event
per direction: a handle opened for both is audited for what it did; path, bytes, SHA-256;
a failed transfer has no digest) and added to the channel's recording when it completed;
files the agent left open are closed and audited when the channel ends, each failure
contained; removals and renames are audited as well.
The upstream connection is opened by the first operation that needs it (the home
directory, for a relative path, or the first allowed operation).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import asyncssh
from asyncssh import FXF_APPEND, FXF_CREAT, FXF_READ, FXF_TRUNC, FXF_WRITE
from asyncssh.sftp import MAX_SFTP_READ_LEN

from tether.audit.recordings import Direction, Recorder, RecordingError, RecordingMeta
from tether.proxy.ssh.session import BrokerSession, UpstreamError, refusal_text
from tether.proxy.ssh.sftp_io import RemoteHandle
from tether.proxy.ssh.sftp_paths import PathRefused, absolute_path, decode_path, resolve_realpath

log = logging.getLogger(__name__)

_WRITE_FLAGS: Final = FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC


@dataclass(eq=False)
class _File:
    path: str
    handle: RemoteHandle
    reading: bool
    writing: bool
    opened: float = field(default_factory=time.monotonic)


class BrokerSftp(asyncssh.SFTPServer):
    """One SFTP channel of a broker session."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], session: BrokerSession) -> None:
        super().__init__(chan)
        self.session = session
        self._client: asyncssh.SFTPClient | None = None
        self._home: str | None = None
        self._files: set[_File] = set()
        self._recorder: Recorder | None = None
        session.channel_opened()

    # --- plumbing ----------------------------------------------------------------------------

    async def _sftp(self) -> asyncssh.SFTPClient:
        if self._client is None:
            try:
                upstream = await self.session.upstream()
                self._client = await upstream.start_sftp_client()
            except (UpstreamError, asyncssh.Error, OSError) as error:
                text = str(error) if isinstance(error, UpstreamError) else "target SFTP refused"
                raise asyncssh.SFTPFailure(f"Tether: {text}") from None
        return self._client

    async def _home_dir(self) -> str:
        if self._home is None:
            client = await self._sftp()
            self._home = decode_path(await client.realpath(b"."))
        return self._home

    async def _path(self, raw: bytes, op: str) -> str:
        """The absolute path ``raw`` names, for the policy; a path that cannot be put to it
        (not UTF-8) is refused for ``op``, and audited."""
        try:
            text = decode_path(raw)
            return absolute_path(raw, "" if text.startswith("/") else await self._home_dir())
        except PathRefused as refused:
            await self.session.refuse({"files": {"op": op, "path": _shown(raw)}}, str(refused))
            raise asyncssh.SFTPPermissionDenied(f"Tether: {refused}") from None

    async def _allow(self, *actions: dict[str, Any]) -> None:
        """Every action must be allowed (each one audited)."""
        for action in actions:
            decision = await self.session.decide({"files": action})
            if not decision.allowed:
                raise asyncssh.SFTPPermissionDenied(refusal_text(decision))

    async def _allow_any(self, path: str, ops: tuple[str, ...]) -> None:
        actions = [{"files": {"op": op, "path": path}} for op in ops]
        decision = await self.session.decide_any(actions)
        if not decision.allowed:
            raise asyncssh.SFTPPermissionDenied(refusal_text(decision))

    @staticmethod
    def _encode(path: str) -> bytes:
        return path.encode("utf-8")

    # --- paths -------------------------------------------------------------------------------

    async def realpath(self, path: bytes) -> bytes:
        try:  # a name that is not UTF-8 is refused here too (it was an uncaught exception)
            text = decode_path(path) if path else "."
            home = "/" if text.startswith("/") else await self._home_dir()
            return self._encode(resolve_realpath(path or b".", home))
        except PathRefused as refused:
            raise asyncssh.SFTPNoSuchFile(f"Tether: {refused}") from None

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        target = await self._path(path, "stat")
        await self._allow_any(target, ("read", "write", "list"))
        return await (await self._sftp()).stat(self._encode(target))

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        target = await self._path(path, "stat")
        await self._allow_any(target, ("read", "write", "list"))
        return await (await self._sftp()).lstat(self._encode(target))

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        target = await self._path(path, "write")
        await self._allow({"op": "write", "path": target})
        await (await self._sftp()).setstat(self._encode(target), attrs)

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        target = await self._path(path, "write")
        await self._allow({"op": "write", "path": target})
        client = await self._sftp()
        await client.setstat(self._encode(target), attrs, follow_symlinks=False)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        # OpenSSH's sftp opens "dir/": on a directory-only operation one trailing '/' names
        # the same directory, so it is the one spelling taken off before the decision.
        if len(path) > 1 and path.endswith(b"/") and not path.endswith(b"//"):
            path = path[:-1]
        target = await self._path(path, "list")
        await self._allow({"op": "list", "path": target})
        async for entry in (await self._sftp()).scandir(self._encode(target)):
            yield entry

    async def readlink(self, path: bytes) -> bytes:
        target = await self._path(path, "list")
        await self._allow({"op": "list", "path": target})
        return await (await self._sftp()).readlink(self._encode(target))

    async def statvfs(self, path: bytes) -> asyncssh.SFTPVFSAttrs:
        target = await self._path(path, "list")
        await self._allow({"op": "list", "path": target})
        return await (await self._sftp()).statvfs(self._encode(target))

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        target = await self._path(path, "write")
        await self._allow({"op": "write", "path": target})
        await (await self._sftp()).mkdir(self._encode(target), attrs)

    async def remove(self, path: bytes) -> None:
        target = await self._path(path, "delete")
        await self._allow({"op": "delete", "path": target})
        await (await self._sftp()).remove(self._encode(target))
        await self._audit("delete", target, None, None)

    async def rmdir(self, path: bytes) -> None:
        target = await self._path(path, "delete")
        await self._allow({"op": "delete", "path": target})
        await (await self._sftp()).rmdir(self._encode(target))
        await self._audit("delete", target, None, None)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = await self._path(oldpath, "rename"), await self._path(newpath, "rename")
        await self._allow({"op": "rename", "path": old, "to": new})
        await (await self._sftp()).rename(self._encode(old), self._encode(new))
        await self._audit("rename", old, None, None, to=new)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = await self._path(oldpath, "rename"), await self._path(newpath, "rename")
        await self._allow({"op": "rename", "path": old, "to": new})
        await (await self._sftp()).posix_rename(self._encode(old), self._encode(new))
        await self._audit("rename", old, None, None, to=new)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        await self._refuse_link("symlink", oldpath, newpath)

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        await self._refuse_link("link", oldpath, newpath)

    async def _refuse_link(self, op: str, oldpath: bytes, newpath: bytes) -> None:
        """Links are never created (a link would let an allowed path reach a denied one);
        the refusal is audited."""
        action = {"op": op, "path": _shown(newpath), "to": _shown(oldpath)}
        await self.session.refuse({"files": action}, "links cannot be created through Tether")
        raise asyncssh.SFTPPermissionDenied("Tether: links cannot be created through Tether")

    # --- files -------------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        target = await self._path(path, "open")
        # Without the write flag a POSIX target opens the file read-only (OpenSSH's
        # sftp-server: O_RDONLY, plus O_APPEND, O_CREAT or O_TRUNC for those flags), so the
        # handle can be read: such an open is decided as ``read`` too.
        reading = bool(pflags & FXF_READ) or not pflags & FXF_WRITE
        writing = bool(pflags & _WRITE_FLAGS)
        ops = [op for op, wanted in (("read", reading), ("write", writing)) if wanted]
        await self._allow(*({"op": op, "path": target} for op in ops))
        config = self.session.context.config
        remote = await (await self._sftp()).open(
            self._encode(target),
            pflags,
            attrs,
            encoding=None,
            block_size=config.sftp_block_size,
            max_requests=config.sftp_max_requests,
        )
        file = _File(
            target,
            RemoteHandle(remote, depth=config.sftp_max_requests, gather=config.sftp_block_size),
            reading,
            writing,
        )
        self._files.add(file)
        return file

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        file = _file(file_obj)
        if not file.reading:
            raise asyncssh.SFTPPermissionDenied("Tether: the file was not opened for reading")
        # The request may name up to 4 GiB, all of it fetched into memory (and as much read
        # ahead): answer at most the read length limits@openssh.com advertises; SFTP allows
        # a short read, and clients ask for the rest.
        data = await file.handle.read(offset, min(size, MAX_SFTP_READ_LEN))
        self.session.bytes_out += len(data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        file = _file(file_obj)
        if not file.writing:
            raise asyncssh.SFTPPermissionDenied("Tether: the file was not opened for writing")
        self.session.bytes_in += len(data)
        return await file.handle.write(offset, data)

    async def close(self, file_obj: object) -> None:
        await self._close(_file(file_obj))

    async def _close(self, file: _File, *, left_open: bool = False) -> None:
        """Close ``file`` on the target and audit what went through it (``left_open``: the
        channel ended before the agent closed it); a failure is audited, then raised."""
        self._files.discard(file)
        error: BaseException | None = None
        try:
            await file.handle.close()
        except BaseException as failure:  # noqa: BLE001 - audited, then re-raised
            error = failure
        await self._finish(file, error, left_open=left_open)
        if error is not None:
            raise error

    async def _finish(self, file: _File, error: BaseException | None, *, left_open: bool) -> None:
        """One ``file_transfer`` per direction that carried bytes (and a write-opened file
        even without any: the open may have created or truncated it). A failed transfer has
        no digest: what the target holds is not known, and the recording lists only the
        transfers that completed, as ``tether sessions show`` checks against the trail."""
        handle = file.handle
        moved = [("read", handle.read_digest)] if handle.read_digest.size else []
        if handle.write_digest.size or (file.writing and error is None):
            moved.append(("write", handle.write_digest))
        duration = time.monotonic() - file.opened
        for op, digest in moved:
            sha = digest.hexdigest() if error is None else None
            await self._audit(
                op,
                file.path,
                digest.size,
                sha,
                duration=duration,
                failed=error,
                left_open=left_open,
            )
            if sha is not None:
                recorder = self._recording()
                if recorder is not None:
                    direction: Direction = "upload" if op == "write" else "download"
                    recorder.transfer(file.path, direction, digest.size, sha)

    async def abandon(self) -> None:
        """Close the files the agent left open when the channel ends, each audited; one that
        fails (a write the target refused) does not stop the others, nor the channel's end."""
        for file in list(self._files):
            try:
                await self._close(file, left_open=True)
            except Exception as error:  # noqa: BLE001 - audited as failed by _close
                log.warning(
                    "session %s: %s left open failed: %r", self.session.id, file.path, error
                )

    async def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        file = _file(file_obj)
        await file.handle.flush()
        return await file.handle.remote.stat()

    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        file = _file(file_obj)
        if not file.writing:
            raise asyncssh.SFTPPermissionDenied("Tether: the file was not opened for writing")
        await file.handle.flush()
        await file.handle.remote.setstat(attrs)

    async def fsync(self, file_obj: object) -> None:
        file = _file(file_obj)
        await file.handle.flush()
        await file.handle.remote.fsync()

    async def fstatvfs(self, file_obj: object) -> asyncssh.SFTPVFSAttrs:
        return await _file(file_obj).handle.remote.statvfs()

    async def exit(self) -> None:
        await self.abandon()
        if self._client is not None:
            self._client.exit()
        if self._recorder is not None:
            try:
                self._recorder.close(0)
            except RecordingError as error:  # each transfer has its own audit event anyway
                log.error("session %s: %s", self.session.id, error)
        self.session.channel_closed()
        # OpenSSH's sftp-server ends with exit status 0, and scp checks it.
        with contextlib.suppress(Exception):
            self.channel.exit(0)

    # --- audit -------------------------------------------------------------------------------

    def _recording(self) -> Recorder | None:
        if self._recorder is None:
            claims = self.session.identity.claims
            meta = RecordingMeta(
                title=f"sftp {self.session.target.name}",
                protocol="sftp",
                agent=claims.agent_id,
                runtime=claims.runtime.id,
                task=claims.task.id,
                target=self.session.target.name,
            )
            try:
                self._recorder = Recorder.start(
                    self.session.next_channel_id(), meta, root=self.session.context.recordings
                )
            except RecordingError as error:
                log.error("session %s: %s", self.session.id, error)
        return self._recorder

    async def _audit(
        self,
        op: str,
        path: str,
        size: int | None,
        sha256: str | None,
        *,
        to: str | None = None,
        duration: float | None = None,
        failed: BaseException | None = None,
        left_open: bool = False,
    ) -> None:
        auditor = self.session.context.services.auditor
        if auditor is None:
            return
        detail: dict[str, Any] = {"error": type(failed).__name__} if failed is not None else {}
        if left_open:
            detail["left_open"] = True  # the agent never closed it: the transfer may be partial
        await auditor.file_transfer(
            self.session.subject,
            target=self.session.target.name,
            op=op,
            path=path,
            size=size,
            sha256=sha256,
            to=to,
            duration_ms=None if duration is None else duration * 1000,
            decision="allow",
            detail=detail or None,
        )


def _shown(raw: bytes) -> str:
    """A path as the audit trail shows it: its bytes that are not UTF-8 escaped."""
    return raw.decode("utf-8", "backslashreplace")


def _file(file_obj: object) -> _File:
    if not isinstance(file_obj, _File):
        raise asyncssh.SFTPInvalidHandle("Tether: unknown handle")
    return file_obj
