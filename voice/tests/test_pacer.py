"""The pacer keeps the device's buffer small, sends control messages in order, and stops cleanly."""
import asyncio
import json

import pytest

from voice.pipeline.pacer import Pacer


class Wire:
    def __init__(self):
        self.sent = []  # (loop time, kind, payload)

    async def text(self, message):
        self.sent.append((asyncio.get_running_loop().time(), "text", json.loads(message)))

    async def audio(self, frame):
        self.sent.append((asyncio.get_running_loop().time(), "audio", frame))

    def kinds(self):
        return [p["state"] if kind == "text" else "audio" for _, kind, p in self.sent]


async def test_audio_leaves_at_real_time_after_a_small_lead():
    wire = Wire()
    pacer = Pacer(wire.text, wire.audio, frame_ms=60, lead_frames=2)
    await pacer.begin()
    for i in range(20):
        await pacer.audio(bytes([i]))
    await pacer.end()
    await pacer.wait_stopped()
    times = [t for t, kind, _ in wire.sent if kind == "audio"]
    first = times[0]
    # Frame k is due lead frames early: never more than ~3 frames ahead of real time.
    for k, t in enumerate(times):
        assert t - first >= (k - 2) * 0.06 - 0.01
        assert t - first <= max(k - 2, 0) * 0.06 + 0.05
    assert wire.kinds()[0] == "start" and wire.kinds()[-1] == "stop"
    # stop goes when the device has played the last frame: 20 frames after the first was played
    stop_at = wire.sent[-1][0]
    assert stop_at - first == pytest.approx(20 * 0.06, abs=0.05)
    await pacer.close()


async def test_sentence_start_travels_in_order_with_the_audio():
    wire = Wire()
    pacer = Pacer(wire.text, wire.audio, frame_ms=20, lead_frames=0)
    await pacer.begin()
    await pacer.sentence("One.")
    await pacer.audio(b"a")
    await pacer.sentence("Two.")
    await pacer.audio(b"b")
    await pacer.end()
    await pacer.wait_stopped()
    assert wire.kinds() == ["start", "sentence_start", "audio", "sentence_start", "audio", "stop"]
    await pacer.close()


async def test_interrupt_drops_queued_audio_and_sends_stop_exactly_once():
    wire = Wire()
    pacer = Pacer(wire.text, wire.audio, frame_ms=60, lead_frames=0)
    await pacer.begin()
    for i in range(50):
        await pacer.audio(bytes([i]))
    await asyncio.sleep(0.2)
    await pacer.interrupt()
    await pacer.interrupt()
    kinds = wire.kinds()
    assert kinds.count("stop") == 1 and kinds[-1] == "stop"
    assert kinds.count("audio") < 10
    await asyncio.sleep(0.2)
    assert wire.kinds() == kinds  # nothing leaks out after the interruption
    await pacer.close()


async def test_a_gap_between_sentences_restarts_the_clock_instead_of_bursting():
    wire = Wire()
    pacer = Pacer(wire.text, wire.audio, frame_ms=60, lead_frames=1)
    await pacer.begin()
    for i in range(3):
        await pacer.audio(b"x")
    await asyncio.sleep(0.6)  # the next sentence is late
    for i in range(5):
        await pacer.audio(b"y")
    await pacer.end()
    await pacer.wait_stopped()
    late = [t for t, kind, p in wire.sent if kind == "audio" and p == b"y"]
    # after re-anchoring only the lead goes out at once, then real time again
    assert late[-1] - late[0] >= (5 - 1 - 1) * 0.06 - 0.02
    await pacer.close()
