"""A target's WebSocket frames read as they stream, and the credential masked in them (sans-IO).

:class:`FrameParser` reads the frames a WebSocket server sends (RFC 6455 section 5: the
server's frames are not masked) from chunks of any size and reports, in order, each
frame's header bytes (:class:`Head`), its payload as it arrives (:class:`Payload`, data
frames; a control frame comes whole, :class:`Control`) and where a message ends
(:class:`MessageEnd`). :class:`FrameMasker` uses it to relay target → agent bytes with
every form of the injected credential masked (:mod:`tether.proxy.http.scrub`). Bytes in,
bytes out: no I/O here.

Security decisions:

* **A message is one body**: the payloads of a text or binary frame and of its
  continuation frames go through one :class:`~tether.proxy.http.scrub.Scrubber`, so a
  secret cut across fragments (or across reads) is masked; the scrubber is flushed at the
  frame with FIN, so nothing is held past a message's end and an interactive tunnel never
  waits for the next message. Within a fragmented message the end of a fragment that may
  begin a secret (at most the longest form less one byte) waits for the next fragment's
  bytes; a control frame that comes meanwhile waits behind it (a target that would wait
  for the agent's pong before sending the rest of a message would wait until it times out).
* **Same length, headers unchanged**: masking keeps a payload's length, so each frame's
  header goes out as received and the stream's length is the input's.
* **Control frames are masked whole** (at most 125 bytes each): a close reason or a ping
  payload can echo the credential too.
* **Constant memory**: a data frame's payload streams in the pieces it came in; only a
  header (at most 10 bytes), a control frame and the scrubber's held tail are kept. Frames
  waiting behind a held tail are bounded (``MAX_WAITING``), past it the stream fails.
* **What cannot be scanned fails closed** (:class:`FrameError`, the tunnel ends): a frame
  with an RSV bit set (an extension such as ``permessage-deflate`` changed its payload, so
  its bytes are not the secret's), a masked frame (a server must not mask), an unknown
  opcode, a fragmented or over-long control frame, a 64-bit length with its top bit set, a
  continuation without a message or a new message inside one. A failed stream stays
  failed. A non-minimal length encoding is passed on as it came (it hides nothing).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from tether.proxy.http.scrub import Masker

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
_DATA: Final = frozenset({CONTINUATION, TEXT, BINARY})
_CONTROL: Final = frozenset({CLOSE, PING, PONG})
MAX_CONTROL: Final = 125
MAX_WAITING: Final = 64 * 1024
_EXTENDED: Final = {126: 2, 127: 8}


class FrameError(Exception):
    """The target's frames cannot be read or scanned: the tunnel must end."""


@dataclass(frozen=True, slots=True)
class Head:
    """A frame's header, as received (``data``), and what it says."""

    data: bytes
    fin: bool
    opcode: int
    length: int


@dataclass(frozen=True, slots=True)
class Payload:
    """A piece of a data frame's payload (never empty)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Control:
    """A whole control frame: its header and its payload."""

    head: Head
    payload: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """The payload of a message's last frame (FIN) is complete."""


Event = Head | Payload | Control | MessageEnd


class FrameParser:
    """The frames of a server's byte stream, chunk by chunk."""

    __slots__ = ("_control", "_failed", "_frame", "_head", "_in_message", "_left")

    def __init__(self) -> None:
        self._head = b""  # an incomplete header's bytes
        self._control = b""  # an incomplete control frame's payload
        self._frame: Head | None = None  # the frame whose payload is being read
        self._left = 0  # payload bytes of ``_frame`` still to come
        self._in_message = False  # a data message started and its FIN frame not yet seen
        self._failed: FrameError | None = None

    def feed(self, data: bytes) -> list[Event]:
        """The events ``data`` completes (FrameError when the stream is not acceptable, and
        on every call after that)."""
        if self._failed is not None:
            raise FrameError(str(self._failed))
        try:
            return self._feed(data)
        except FrameError as error:
            self._failed = error
            raise

    def _feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos, size = 0, len(data)
        while True:
            frame = self._frame
            if frame is not None:
                take = min(self._left, size - pos)
                if frame.opcode in _CONTROL:
                    self._control += data[pos : pos + take]
                elif take:
                    events.append(Payload(data[pos : pos + take] if take < size else data))
                pos += take
                self._left -= take
                if self._left:
                    return events
                self._end(frame, events)
                continue
            if pos == size:
                return events
            head = self._head
            if len(head) < 2:
                take = min(2 - len(head), size - pos)
                head += data[pos : pos + take]
                pos += take
                if len(head) < 2:
                    self._head = head
                    continue
                self._check(head)
            need = 2 + _EXTENDED.get(head[1] & 0x7F, 0)
            more = min(need - len(head), size - pos)
            head += data[pos : pos + more]
            pos += more
            if len(head) < need:
                self._head = head
                continue
            self._head = b""
            self._start(head, events)

    def _check(self, head: bytes) -> None:
        first, second = head[0], head[1]
        opcode = first & 0x0F
        if first & 0x70:
            raise FrameError("a frame has an RSV bit set (an extension coded its payload)")
        if second & 0x80:
            raise FrameError("a frame from the target is masked")
        if opcode in _CONTROL:
            if not first & 0x80:
                raise FrameError("a control frame is fragmented")
            if second & 0x7F > MAX_CONTROL:
                raise FrameError("a control frame is longer than 125 bytes")
        elif opcode == CONTINUATION:
            if not self._in_message:
                raise FrameError("a continuation frame outside a message")
        elif opcode in _DATA:
            if self._in_message:
                raise FrameError("a new message before the last one ended")
        else:
            raise FrameError(f"a frame has the unknown opcode {opcode:#x}")

    def _start(self, head: bytes, events: list[Event]) -> None:
        length = head[1] & 0x7F
        if length >= 126:
            length = int.from_bytes(head[2:], "big")
            if len(head) == 10 and length >> 63:
                raise FrameError("a frame's 64-bit length has its top bit set")
        frame = Head(head, bool(head[0] & 0x80), head[0] & 0x0F, length)
        if frame.opcode in _DATA:
            events.append(frame)
            self._in_message = not frame.fin
        self._frame, self._left = frame, length
        if not length:
            self._end(frame, events)

    def _end(self, frame: Head, events: list[Event]) -> None:
        self._frame = None
        if frame.opcode in _CONTROL:
            events.append(Control(frame, self._control))
            self._control = b""
        elif frame.fin:
            events.append(MessageEnd())


class FrameMasker:
    """Target → agent bytes with every form of the credential masked in every payload.

    ``feed`` returns what may go to the agent so far, in order; concatenated, the output of
    any chunking of a stream is the same, and of a stream that ends with a message (or a
    control frame) as long as the stream. ``count``: forms masked so far."""

    __slots__ = ("_count", "_masker", "_parser", "_scrubber", "_seen", "_sent", "_waiting",
                 "_waiting_bytes")  # fmt: skip

    def __init__(self, masker: Masker) -> None:
        self._parser = FrameParser()
        self._masker = masker
        self._scrubber = masker.scrubber()  # the current message's
        self._seen = 0  # payload bytes of the current message read
        self._sent = 0  # ... and given out
        self._waiting: deque[tuple[int, bytes]] = deque()  # (payload offset, frame bytes)
        self._waiting_bytes = 0
        self._count = 0

    @property
    def count(self) -> int:
        return self._count + self._scrubber.count

    def feed(self, data: bytes) -> bytes:
        """The bytes that may go to the agent (FrameError: the stream must end)."""
        out: list[bytes] = []
        for event in self._parser.feed(data):
            if isinstance(event, Payload):
                self._seen += len(event.data)
                self._give(self._scrubber.feed(event.data), out)
            elif isinstance(event, Head):
                self._put(event.data, out)
            elif isinstance(event, Control):
                payload, _, count = self._masker.masked(event.payload, len(event.payload))
                self._count += count
                self._put(event.head.data + payload, out)
            else:  # the message's end: nothing is held past it
                self._give(self._scrubber.flush(), out)
                self._count += self._scrubber.count
                self._scrubber = self._masker.scrubber()
                self._seen = self._sent = 0
        return out[0] if len(out) == 1 else b"".join(out)

    def _put(self, frame: bytes, out: list[bytes]) -> None:
        """Frame bytes that go after the payload read so far."""
        if self._sent == self._seen:
            out.append(frame)
            return
        self._waiting_bytes += len(frame)
        if self._waiting_bytes > MAX_WAITING:
            raise FrameError("too many frames behind a held fragment")
        self._waiting.append((self._seen, frame))

    def _give(self, payload: bytes, out: list[bytes]) -> None:
        """Decided payload bytes, with the frames waiting at their offsets among them."""
        pos = 0
        while self._waiting:
            at, frame = self._waiting[0]
            cut = at - self._sent
            if cut > len(payload) - pos:
                break
            if cut:
                out.append(payload[pos : pos + cut])
            pos += cut
            self._sent += cut
            out.append(frame)
            self._waiting.popleft()
            self._waiting_bytes -= len(frame)
        if pos < len(payload):
            out.append(payload[pos:] if pos else payload)
            self._sent += len(payload) - pos
