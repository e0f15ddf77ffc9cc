"""Session channels: ``exec`` and interactive shells, decided, forwarded and recorded.

``exec``: the command string is decided as ``{"ssh": {"command": ...}}`` (spec 5.2). On
allow, the target receives :meth:`ParsedCommand.canonical` of the parse the engine decided on
(re-quoted from the parsed words, DESIGN invariant 4), **never the raw string**. stdin,
stdout and stderr are streamed both ways with flow control; the exit status (or the exit
signal) is passed back. A denial or ``approval_required`` is one ``Tether: ...`` line on
stderr and exit status 1; the target is never contacted.

Shell and terminal: refused unless a rule allows ``{"ssh": {"shell": true}}``; an ``exec``
that asked for a pty (``ssh -t``) needs both its command and ``ssh.shell`` allowed, since a
terminal makes an allowed command interactive. An allowed shell is
recorded as asciicast v2 (output always, keystrokes only with ``ssh.recording.record_input``).
What is typed *inside* an allowed shell is recorded, not authorized: the policy decides
whether the shell may start, nothing more.

Other subsystems than ``sftp`` are refused (audited: a decision and an ``ssh.command``
event). A command whose channel is cut mid-way (the agent hangs up) is audited all the
same, with its output so far, its recording and the error. Each channel is recorded under
``<session id>.<channel number>``; a recording that cannot be started refuses the channel
(fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

import asyncssh
from asyncssh.packet import SSHPacket

from tether.audit.recordings import (
    Recorder,
    RecordingError,
    RecordingMeta,
    RecordingOptions,
    RecordingSummary,
)
from tether.audit.redact import Redactor
from tether.policy.model import Decision
from tether.policy.shell import parse_command
from tether.proxy.ssh.session import BrokerSession, UpstreamError, refusal_text

log = logging.getLogger(__name__)

CHUNK = 65536
ServerProcess = asyncssh.SSHServerProcess[bytes]
ClientProcess = asyncssh.SSHClientProcess[bytes]
Terminal = tuple[str, tuple[int, int, int, int]] | None  # type and size, or no terminal


class BrokerChannel(asyncssh.SSHServerChannel[bytes]):
    """asyncssh's session channel, passing on the requests it would refuse unseen.

    asyncssh answers an ``exec`` whose command is not UTF-8, or a ``subsystem`` whose name is
    not ASCII, with a failure before any session exists: the agent saw ``exec request
    failed`` and the audit trail nothing (DESIGN invariant 5: every action, allowed or not,
    is audited). Here the command is decoded with ``surrogateescape`` (the session refuses it
    when it finds a lone surrogate, see :func:`_run_exec`) and the subsystem name with its odd
    bytes escaped, which can never name ``sftp``; both are then refused and audited like
    any other.
    """

    def _process_exec_request(self, packet: SSHPacket) -> bool:
        command = packet.get_string()
        packet.check_end()
        return self._start_session(command=command.decode("utf-8", "surrogateescape"))

    def _process_subsystem_request(self, packet: SSHPacket) -> bool:
        subsystem = packet.get_string()
        packet.check_end()
        return self._start_session(subsystem=subsystem.decode("ascii", "backslashreplace"))

    # X11 and agent forwarding are never carried out (no listener on the target for them):
    # refused here, before asyncssh's own handling, and audited (they were refused with
    # nothing in the trail). What the request carries (an X11 cookie) is not recorded.

    def _process_x11_req_request(self, packet: SSHPacket) -> bool:
        self._refuse_request("x11_forward")
        return False

    def _process_auth_agent_req_at_openssh_dot_com_request(self, packet: SSHPacket) -> None:
        self._refuse_request("agent_forward")
        self._report_response(False)  # asyncssh answers this one itself, later

    def _refuse_request(self, kind: str) -> None:
        owner = self.get_connection().get_owner()
        refuse = getattr(owner, "refuse_request", None)
        if refuse is not None:
            refuse(kind)


def _not_text(command: str) -> str | None:
    """``command`` with its bytes that are not UTF-8 escaped, if it holds any (else None)."""
    try:
        command.encode("utf-8")
    except UnicodeEncodeError:
        return command.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


async def handle_process(process: ServerProcess, session: BrokerSession) -> None:
    """Run one session channel (exec, shell or a non-SFTP subsystem) to its end."""
    session.channel_opened()
    try:
        if process.subsystem is not None:
            await _refuse_subsystem(process, session, process.subsystem)
        elif process.command is None:
            await _run_shell(process, session)
        else:
            await _run_exec(process, session, process.command)
    except Exception as error:
        log.exception("session %s: channel failed", session.id)
        await _fail(process, f"Tether: internal error ({type(error).__name__})")
    finally:
        session.channel_closed()


async def _fail(process: ServerProcess, message: str, status: int = 1) -> None:
    with contextlib.suppress(Exception):  # the channel may be gone already
        process.stderr.write(message.encode("utf-8", "replace") + b"\r\n")
        await process.stderr.drain()
    with contextlib.suppress(Exception):
        process.exit(status)


async def _refuse_subsystem(process: ServerProcess, session: BrokerSession, name: str) -> None:
    """Only ``sftp`` is served: any other subsystem is refused, and audited as such."""
    shown = f"(subsystem {name})"
    decision = await session.refuse({"ssh": {"subsystem": name}}, "only sftp is served")
    await _audit_command(session, shown, decision, None, 0, 0.0, refused=True)
    await _fail(process, f"Tether: subsystem {name!r} is not available")


def _terminal(process: ServerProcess) -> Terminal:
    """The channel's terminal as it stands when its session starts, read once.

    asyncssh's server takes a ``pty-req`` even after ``exec`` or ``shell``; one that comes
    later (say while the target is dialled) must not give the target a terminal the decision
    did not see, so the terminal is read before the decision and only that reading is used.
    """
    term = process.get_terminal_type()
    if term is None:
        return None
    return term, process.get_terminal_size()


async def _run_exec(process: ServerProcess, session: BrokerSession, command: str) -> None:
    shown = _not_text(command)
    if shown is not None:  # it cannot be put to the policy (BrokerChannel): refused, audited
        action = {"ssh": {"command": shown}}
        decision = await session.refuse(action, "the command is not valid UTF-8")
        await _audit_command(session, shown, decision, None, 0, 0.0, refused=True)
        await _fail(process, refusal_text(decision))
        return
    terminal = _terminal(process)
    decision = await session.decide({"ssh": {"command": command}})
    if decision.allowed and terminal is not None:
        decision = await session.decide({"ssh": {"shell": True}})  # a terminal: see above
    if not decision.allowed:
        await _audit_command(session, command, decision, None, 0, 0.0, refused=True)
        await _fail(process, refusal_text(decision))
        return
    canonical = parse_command(command).canonical()
    meta = _meta(terminal, session, command=canonical)
    await _forward(process, session, decision, canonical, meta, terminal)


async def _run_shell(process: ServerProcess, session: BrokerSession) -> None:
    terminal = _terminal(process)
    decision = await session.decide({"ssh": {"shell": True}})
    if not decision.allowed:
        await _audit_command(session, "(shell)", decision, None, 0, 0.0, refused=True)
        await _fail(process, refusal_text(decision))
        return
    meta = _meta(terminal, session, command=None)
    await _forward(process, session, decision, None, meta, terminal)


def _meta(terminal: Terminal, session: BrokerSession, *, command: str | None) -> RecordingMeta:
    """The recording's header. The command is redacted as its ``ssh.command`` event is
    (docs/recordings.md: secrets must not land in recordings): the cast kept
    ``--token=...`` or ``curl -u user:password`` in clear."""
    term, (width, height) = (None, (0, 0)) if terminal is None else (terminal[0], terminal[1][:2])
    claims = session.identity.claims
    if command is not None:
        auditor = session.context.services.auditor
        command = (auditor.redactor if auditor is not None else Redactor()).text(command)
    return RecordingMeta(
        width=width or 80,
        height=height or 24,
        env={"TERM": term} if term else {},
        protocol="ssh",
        agent=claims.agent_id,
        runtime=claims.runtime.id,
        task=claims.task.id,
        target=session.target.name,
        command=command,
    )


async def _forward(
    process: ServerProcess,
    session: BrokerSession,
    decision: Decision,
    command: str | None,
    meta: RecordingMeta,
    terminal: Terminal,
) -> None:
    """Run ``command`` (None: a shell) on the target and stream it to the agent, with the
    terminal read before the decision (None: none)."""
    shown = command if command is not None else "(shell)"
    config = session.context.config.recording
    options = RecordingOptions(config.record_input, config.max_output_bytes)
    try:
        recorder = Recorder.start(
            session.next_channel_id(), meta, root=session.context.recordings, options=options
        )
    except RecordingError as error:
        log.error("session %s: %s", session.id, error)
        await _fail(process, "Tether: the session cannot be recorded, refused")
        return
    started = time.monotonic()
    try:
        upstream = await session.upstream()
        remote = await upstream.create_process(
            command,
            encoding=None,
            term_type=None if terminal is None else terminal[0],
            term_size=None if terminal is None else terminal[1],
        )
    except (UpstreamError, asyncssh.Error, OSError) as error:
        text = str(error) if isinstance(error, UpstreamError) else "the target refused the channel"
        summary, unrecorded = _finish(recorder, None, marker=text)
        if unrecorded is not None:
            log.error("session %s: %s", session.id, unrecorded)
        await _audit_command(session, shown, decision, None, 0, 0.0, error=text, recording=summary)
        await _fail(process, f"Tether: {text}")
        return
    counted = [0]
    failed: RecordingError | None = None
    cut: str | None = None
    status: int | None = None
    signal: tuple[str, bool, str, str] | None = None
    try:
        await _pump(process, remote, session, recorder, counted)
        status, signal = remote.exit_status, remote.exit_signal
    except RecordingError as error:
        failed = error
    except (asyncssh.Error, OSError) as error:  # the agent or the target went away mid-way
        cut = f"the channel was cut ({type(error).__name__})"
    finally:
        remote.close()
    summary, closing = _finish(recorder, status)
    failed = failed or closing
    duration = time.monotonic() - started
    if failed is not None:
        # What cannot be recorded does not go on: the channel ends, and the event says why
        # (it names no recording: there is none complete to bind). Fail closed, as at start.
        log.error("session %s: %s; the channel is ended", session.id, failed)
        await _audit_command(
            session, shown, decision, None, counted[0], duration, error=str(failed)
        )
        await _fail(process, "Tether: the session recording failed, the session is ended")
        return
    if cut is not None:  # audited all the same: what ran, what the agent got, the recording
        await _audit_command(session, shown, decision, None, counted[0], duration, error=cut,
                             recording=summary)  # fmt: skip
        await _fail(process, f"Tether: {cut}")
        return
    await _audit_command(session, shown, decision, status, counted[0], duration, recording=summary)
    if signal is not None:
        name, core, message, lang = signal
        process.exit_with_signal(name, core, message, lang)
    else:
        process.exit(status if status is not None else 255)


def _finish(
    recorder: Recorder, status: int | None, *, marker: str | None = None
) -> tuple[RecordingSummary | None, RecordingError | None]:
    """Close the recording (after a last ``marker``): its summary, or why it failed."""
    if marker is not None:
        with contextlib.suppress(RecordingError):  # close() raises it again, and closes
            recorder.marker(marker)
    try:
        return recorder.close(status), None
    except RecordingError as error:
        return None, error


async def _pump(
    process: ServerProcess,
    remote: ClientProcess,
    session: BrokerSession,
    recorder: Recorder,
    counted: list[int],
) -> None:
    """Copy both ways until the remote side exits, counting the bytes sent to the agent in
    ``counted[0]``. Raises :class:`RecordingError` when the recording cannot be written,
    which ends the channel (the other direction stops too)."""

    async def down(source: asyncssh.SSHReader[bytes], sink: asyncssh.SSHWriter[bytes]) -> None:
        while data := await source.read(CHUNK):
            recorder.output(data)
            counted[0] += len(data)
            session.bytes_out += len(data)
            sink.write(data)
            await sink.drain()

    up = asyncio.create_task(_pump_stdin(process, remote, session, recorder))
    try:
        try:
            await asyncio.gather(
                down(remote.stdout, process.stdout), down(remote.stderr, process.stderr)
            )
        except RecordingError:
            remote.close()  # the other stream and the input end with it
            raise
        await remote.wait_closed()
    finally:
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await up
    if up.done() and not up.cancelled() and isinstance(up.exception(), RecordingError):
        raise cast(RecordingError, up.exception())


async def _pump_stdin(
    process: ServerProcess, remote: ClientProcess, session: BrokerSession, recorder: Recorder
) -> None:
    while True:
        try:
            data = await process.stdin.read(CHUNK)
        except asyncssh.TerminalSizeChanged as change:
            remote.change_terminal_size(
                change.width, change.height, change.pixwidth, change.pixheight
            )
            try:
                recorder.resize(change.width, change.height)
            except RecordingError:
                remote.close()
                raise
            continue
        except asyncssh.SignalReceived as received:
            remote.send_signal(received.signal)
            continue
        except asyncssh.BreakReceived as brk:
            remote.send_break(brk.msec)
            continue
        if not data:
            remote.stdin.write_eof()
            return
        try:
            recorder.input(data)
        except RecordingError:
            remote.close()  # the output side ends too; _pump raises this task's error
            raise
        session.bytes_in += len(data)
        remote.stdin.write(data)
        await remote.stdin.drain()


async def _audit_command(
    session: BrokerSession,
    command: str,
    decision: Decision,
    status: int | None,
    output: int,
    duration: float,
    *,
    refused: bool = False,
    error: str | None = None,
    recording: RecordingSummary | None = None,
) -> None:
    auditor = session.context.services.auditor
    if auditor is None:
        return
    detail: dict[str, Any] = {"policy_version": decision.policy_version}
    if refused:
        detail["refused"] = decision.reason
    if error is not None:
        detail["error"] = error
    if recording is not None:  # binds the recording to the chain: see docs/recordings.md
        detail["recording"] = {"id": recording.session_id, "sha256": recording.cast_sha256}
    await auditor.command(
        session.subject,
        target=session.target.name,
        command=command,
        exit_status=status,
        bytes_out=output,
        duration_ms=duration * 1000,
        decision=decision.decision,
        rule=decision.rule,
        detail=detail,
    )
