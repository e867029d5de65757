"""The small-frame unmasking and the observer-free message end of ``xiaozhi.ws_frames``: the
masker must give autobahn's own bytes for every size, mask and split of a payload across reads.
(Through a real server, ``test_server.py`` sends frames split byte by byte and frames over the
small-payload bound.)"""
import os
import random

import pytest
from autobahn.websocket.xormasker import create_xor_masker

from xiaozhi import ws_frames
from xiaozhi.ws_frames import SMALL_PAYLOAD, IntXorMasker


def autobahn_unmask(mask: bytes, payload: bytes) -> bytes:
    return create_xor_masker(mask, len(payload)).process(payload)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 60, 127, 128, 132, 1000, SMALL_PAYLOAD])
def test_one_read_gives_autobahns_bytes(size):
    rng = random.Random(size)
    for _ in range(20):
        mask, payload = rng.randbytes(4), rng.randbytes(size)
        masker = IntXorMasker(mask)
        assert masker.process(payload) == autobahn_unmask(mask, payload)
        assert masker.pointer() == size


def test_a_payload_split_across_reads_gives_the_same_bytes():
    rng = random.Random(7)
    for _ in range(300):
        mask, payload = rng.randbytes(4), rng.randbytes(rng.randrange(1, 600))
        cuts = sorted(rng.sample(range(1, len(payload) + 1), min(len(payload), rng.randrange(1, 6))))
        masker, out, start = IntXorMasker(mask), [], 0
        for cut in cuts + [len(payload)]:
            out.append(masker.process(payload[start:cut]))
            start = cut
            assert masker.pointer() == start
        assert b"".join(out) == autobahn_unmask(mask, payload)


def test_reset_starts_the_mask_again():
    masker = IntXorMasker(b"\x01\x02\x03\x04")
    masker.process(b"abc")
    masker.reset()
    assert masker.pointer() == 0 and masker.process(b"abcd") == autobahn_unmask(b"\x01\x02\x03\x04", b"abcd")


def test_install_picks_by_size_and_keeps_autobahns_masker_for_large_payloads():
    import autobahn.websocket.protocol as autobahn_protocol
    import daphne.server

    saved = autobahn_protocol.create_xor_masker, daphne.server.WebSocketFactory
    try:
        ws_frames.install()
        ws_frames.install()  # twice: still one level of wrapping
        choose = autobahn_protocol.create_xor_masker
        assert isinstance(choose(b"abcd", 132), IntXorMasker)
        large = choose(b"abcd", SMALL_PAYLOAD + 1)
        assert not isinstance(large, IntXorMasker)
        payload = os.urandom(SMALL_PAYLOAD + 1)
        assert large.process(payload) == IntXorMasker(b"abcd").process(payload)
        assert choose.autobahn_masker is saved[0]
        assert daphne.server.WebSocketFactory.protocol is ws_frames.DeviceWebSocketProtocol
    finally:
        autobahn_protocol.create_xor_masker, daphne.server.WebSocketFactory = saved


class _Recorder(ws_frames.DeviceWebSocketProtocol):
    """The protocol's message end alone: what it hands on, and whether it fires the observer event."""

    def __init__(self):
        self.received, self.fired = [], []
        self.failedByMe, self.trackedTimings = False, None

    def _onMessage(self, payload, is_binary):
        self.received.append((payload, is_binary))

    def fire(self, event, *args, **kwargs):
        self.fired.append(event)
        from autobahn.util import ObservableMixin

        return ObservableMixin.fire(self, event, *args, **kwargs)


def test_a_message_reaches_daphne_without_the_observer_event_nobody_listens_to():
    protocol = _Recorder()
    protocol.message_data, protocol.message_is_binary = [b"ab", b"cd"], True
    protocol.onMessageEnd()
    assert protocol.received == [(b"abcd", True)] and protocol.fired == [] and protocol.message_data is None


def test_with_an_observer_the_event_is_fired_as_autobahn_does():
    protocol = _Recorder()
    heard = []
    protocol.set_valid_events(["message"])
    protocol.on("message", lambda payload, is_binary: heard.append(payload))
    protocol.message_data, protocol.message_is_binary = [b"hi"], False
    protocol.onMessageEnd()
    assert protocol.received == [(b"hi", False)] and protocol.fired == ["message"] and heard == [b"hi"]
