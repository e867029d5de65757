"""The pacer keeps the device's buffer small, sends control messages in order, and stops cleanly."""
import asyncio
import json

import pytest

from voice.pipeline.pacer import NOTHING_PLAYED, Pacer


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


async def wait_until(predicate, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


def sent_index(wire, kind, payload):
    return next((i for i, (_, k, p) in enumerate(wire.sent) if k == kind and p == payload), None)


async def two_sentences(pacer, frames_each=4, end=True):
    await pacer.begin()
    await pacer.sentence("A.")
    for _ in range(frames_each):
        await pacer.audio(b"a")
    await pacer.sentence("B.")
    for _ in range(frames_each):
        await pacer.audio(b"b")
    if end:
        await pacer.end()


async def test_an_interrupted_reply_reports_what_the_device_played_not_what_was_sent():
    wire = Wire()
    ended = []
    # 100 ms frames, a 3-frame cushion: the first four frames leave at once, then one per frame.
    pacer = Pacer(wire.text, wire.audio, frame_ms=100, lead_frames=3, on_reply_ended=lambda: ended.append(1))
    await two_sentences(pacer)
    await wait_until(lambda: sent_index(wire, "audio", b"b") is not None)
    playback = await pacer.interrupt()
    # B's first frame has been sent but sits in the device's cushion behind A's last frames.
    assert playback.interrupted and playback.heard_text == "A."
    assert 0 <= playback.played_seconds < 0.4
    assert wire.kinds().count("stop") == 1 and ended == [1]
    await pacer.close()


async def test_a_sentence_counts_as_heard_once_its_audio_plays():
    wire = Wire()
    pacer = Pacer(wire.text, wire.audio, frame_ms=50, lead_frames=1)
    await two_sentences(pacer, frames_each=3, end=False)  # the reply stays open until interrupted
    await wait_until(lambda: [k for _, k, p in wire.sent].count("audio") == 6)
    await asyncio.sleep(0.05)  # one frame on: B's audio has reached the device's speaker
    playback = await pacer.interrupt()
    assert playback.interrupted and playback.heard_text == "A. B."
    assert 0.2 <= playback.played_seconds <= 0.3  # never more than was sent
    await pacer.close()


async def test_interrupt_without_an_open_reply_reports_nothing_and_sends_nothing():
    wire = Wire()
    ended = []
    pacer = Pacer(wire.text, wire.audio, frame_ms=20, lead_frames=0, on_reply_ended=lambda: ended.append(1))
    assert await pacer.interrupt() == NOTHING_PLAYED
    await two_sentences(pacer, frames_each=2)
    await pacer.wait_stopped()
    assert not pacer.speaking and ended == [1]  # the natural end is reported once too
    assert pacer.playback() == NOTHING_PLAYED and await pacer.interrupt() == NOTHING_PLAYED
    assert wire.kinds().count("stop") == 1 and ended == [1]
    await pacer.close()


async def test_speaking_is_true_from_tts_start_to_tts_stop():
    wire = Wire()
    seen = []

    async def text(message):
        await wire.text(message)
        seen.append((json.loads(message)["state"], pacer.speaking))

    pacer = Pacer(text, wire.audio, frame_ms=20, lead_frames=0)
    assert not pacer.speaking
    await two_sentences(pacer, frames_each=1)
    await pacer.wait_stopped()
    assert seen == [("start", True), ("sentence_start", True), ("sentence_start", True), ("stop", False)]
    await pacer.close()


async def test_after_close_a_late_reply_is_dropped_without_starting_a_sending_task():
    # A handler that was awaiting while the session closed may still try to speak: nothing may be
    # sent, no task started (it would outlive the session), and no put may wait for a consumer.
    wire = Wire()
    pacer = Pacer(wire.text, wire.audio, frame_ms=60, lead_frames=2, max_queued=2)
    await pacer.close()
    async with asyncio.timeout(1):
        await pacer.begin()
        await pacer.sentence("too late")
        for i in range(5):  # more than the queue holds
            await pacer.audio(bytes([i]))
        await pacer.text(json.dumps({"type": "llm", "emotion": "happy"}))
        await pacer.end()
        await pacer.wait_stopped()
    await asyncio.sleep(0.1)
    assert pacer._task is None and wire.sent == []
