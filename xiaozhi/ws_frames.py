"""autobahn's receive path made cheaper for the frames devices send: small, many, masked.

A listening device sends ~17 WebSocket frames a second of ~130 bytes; at 400 devices that is ~6,700
frames a second, each handled on the one event loop. Profiled there (py-spy, 400 devices), two steps
of autobahn's per-frame work took about a fifth of the loop, neither doing anything our frames need:

- Unmasking: autobahn builds a native (cffi) masker object for every frame, with two C allocations,
  a finaliser and a copy in and out (~12-16 % of the loop). For a payload this small one XOR of two
  Python ints does the same in a fraction of the time; larger payloads keep autobahn's SIMD masker.
- The ``message`` event: after handing each message to Daphne, autobahn fires an observer event
  that nobody here observes, making and resolving a Deferred every time (~10 %). It is skipped when
  the protocol has no observers at all, and fired as before when it has any.

With those gone, autobahn's general frame machine was still ~a fifth of the loop: a read's debug
line formatted whether logged or not, then a dozen hooks per frame (frame begin, message begin,
frame data, frame end, message end) for fragmentation, compression, UTF-8 and control frames. A
device frame needs none of them, so :meth:`DeviceWebSocketProtocol.dataReceived` takes, from the
start of a read, every complete frame that is final, binary, masked, uncompressed, at most
``SMALL_PAYLOAD`` bytes and within the payload limits, and hands it to Daphne as autobahn would,
with autobahn's traffic counts and auto-ping bookkeeping. Anything else (text, control frames,
fragments, a frame split across reads, a protocol error) and all that follows it in the read goes
through autobahn unchanged.

Installed by the server entry point (``xiaozhi.server``) for its own Daphne; nothing changes what a
frame carries. ``xiaozhi/tests/test_ws_frames.py`` checks the masker against autobahn's;
``xiaozhi/tests/test_server.py`` sends a real server split, coalesced, mixed and malformed frames.
"""
from __future__ import annotations

from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

SMALL_PAYLOAD = 4096  # bytes; up to this a frame is unmasked with one int XOR, beyond it by autobahn


def _unmask(mask: bytes, payload: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``mask`` repeated: one operation on two ints instead of a byte loop."""
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


class IntXorMasker:
    """The masker interface autobahn uses (``process`` / ``pointer`` / ``reset``), for one frame whose
    payload may arrive in several reads: ``pointer`` is how far into the payload it has got."""

    __slots__ = ("_mask", "_pointer")

    def __init__(self, mask: bytes):
        self._mask = bytes(mask)
        self._pointer = 0

    def pointer(self) -> int:
        return self._pointer

    def reset(self) -> None:
        self._pointer = 0

    def process(self, data: bytes) -> bytes:
        phase = self._pointer & 3  # where in the 4-byte mask this piece of the payload starts
        self._pointer += len(data)
        return _unmask((self._mask * 2)[phase : phase + 4], data)


def install() -> None:
    """Route autobahn's masker choice through :func:`_masker` and Daphne's WebSocket factory to
    :class:`DeviceWebSocketProtocol`. Idempotent."""
    import autobahn.websocket.protocol as autobahn_protocol
    import daphne.server

    original = getattr(autobahn_protocol.create_xor_masker, "autobahn_masker", autobahn_protocol.create_xor_masker)

    def _masker(mask, length=None):
        if length is not None and length <= SMALL_PAYLOAD:
            return IntXorMasker(mask)
        return original(mask, length)

    _masker.autobahn_masker = original
    autobahn_protocol.create_xor_masker = _masker
    daphne.server.WebSocketFactory = DeviceWebSocketFactory  # Server.__init__ builds it by this module-level name


SMALL_BINARY = 0x82  # first header byte: FIN, no RSV bits, opcode 2 (binary)
EXTENDED_16 = 126  # a 7-bit length of 126: the length is in the next 16 bits (minimal: 126 and over)


class DeviceWebSocketProtocol(WebSocketProtocol):
    """Daphne's WebSocket protocol with the fast path for device frames (see the module's docstring)."""

    def dataReceived(self, data: bytes) -> None:
        if (self.state != WebSocketProtocol.STATE_OPEN or self.data or self.current_frame is not None
                or self.inside_message or self.failedByMe or self._listeners is not None
                or self.logOctets or self.logFrames or self.trackedTimings):
            super().dataReceived(data)
            return
        stats = self.trafficStats
        stats.incomingOctetsWireLevel += len(data)
        size, pos = len(data), 0
        max_message, max_frame = self.maxMessagePayloadSize, self.maxFramePayloadSize
        while size - pos >= 6 and data[pos] == SMALL_BINARY:
            second = data[pos + 1]
            if not second & 0x80:
                break  # unmasked: a violation autobahn reports
            length, head = second & 0x7F, 6
            if length == EXTENDED_16:  # most Opus packets are 100-200 bytes
                if size - pos < 8:
                    break
                length, head = (data[pos + 2] << 8) | data[pos + 3], 8
                if length < EXTENDED_16 or length > SMALL_PAYLOAD:
                    break  # not the minimal encoding (autobahn's violation), or large: autobahn's masker
            elif length > EXTENDED_16:
                break  # 64-bit length
            end = pos + head + length
            if end > size:
                break  # not all here yet
            if 0 < max_message < length or 0 < max_frame < length:
                break  # autobahn refuses it, with its close code
            payload = _unmask(data[pos + head - 4 : pos + head], data[pos + head : end])
            pos = end
            stats.incomingOctetsWebSocketLevel += length
            stats.incomingOctetsAppLevel += length
            stats.incomingWebSocketFrames += 1
            stats.incomingWebSocketMessages += 1
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
            self._onMessage(payload, True)
            if self.state != WebSocketProtocol.STATE_OPEN:
                break  # closing while handling it: autobahn decides what the rest is worth
        if pos < size:
            self.data += data[pos:]  # counted on the wire above; the rest is autobahn's
            self.consumeData()

    def onMessageEnd(self) -> None:
        if self._listeners is not None or self.trackedTimings:
            super().onMessageEnd()  # someone observes messages (or timings are on): autobahn's own path
            return
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None


class DeviceWebSocketFactory(WebSocketFactory):
    protocol = DeviceWebSocketProtocol
