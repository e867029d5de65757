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

Installed by the server entry point (``xiaozhi.server``) for its own Daphne; nothing changes what a
frame carries, and ``xiaozhi/tests/test_ws_frames.py`` checks the masker against autobahn's.
"""
from __future__ import annotations

from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

SMALL_PAYLOAD = 4096  # bytes; up to this a frame is unmasked with one int XOR, beyond it by autobahn


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
        size = len(data)
        if not size:
            return b""
        phase = self._pointer & 3
        key = (self._mask * ((size + phase) // 4 + 1))[phase : phase + size]
        self._pointer += size
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


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


class DeviceWebSocketProtocol(WebSocketProtocol):
    def onMessageEnd(self) -> None:
        if self._listeners is not None or self.trackedTimings:
            super().onMessageEnd()  # someone observes messages (or timings are on): autobahn's own path
            return
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None


class DeviceWebSocketFactory(WebSocketFactory):
    protocol = DeviceWebSocketProtocol
