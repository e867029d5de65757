"""Ending a turn at a pause: speculative ASR and the end-of-turn decision (issue 12).

The fast half drives the real session on the scripted harness (fake models, real listener,
speculation and dispatch); the half that depends on the models themselves (does a mid-sentence
pause in real speech reach the LLM whole?) is ``test_end_of_turn_models.py``.
"""
import asyncio
import threading

import numpy as np
import pytest

from voice.pipeline.end_of_turn import ends_turn, words_look_complete
from voice.providers.fake import FakeTurn
from voice.tests.harness import RATE, Conversation, silence_packets


class LengthASR:
    """Says how much audio it was given, and keeps every call's length: which audio reached the
    ASR (and so the LLM) is then visible in the ``stt`` text."""

    name = "length"

    def __init__(self, words: str = "", delay: float = 0.0):
        self.words = words
        self.delay = delay
        self.heard: list[float] = []  # seconds of audio per call, in call order
        self.lock = threading.Lock()

    def transcribe(self, pcm: np.ndarray) -> str:
        seconds = len(pcm) / RATE
        with self.lock:
            self.heard.append(seconds)
        if self.delay:
            threading.Event().wait(self.delay)
        return self.words or f"Heard {seconds:.2f} seconds."


def test_trailing_words_are_not_a_finished_sentence():
    assert words_look_complete("What is the capital of France?")
    assert words_look_complete("Turn on the kitchen light.")
    for trailing in ("I would like to know.", "the capital of", "Tell me about", "and then...", "Well,", ""):
        assert not words_look_complete(trailing), trailing
    assert ends_turn(0.9, "What time is it?", 0.5)
    assert not ends_turn(0.2, "What time is it?", 0.5)
    assert not ends_turn(None, "What time is it?", 0.5)  # no model: only silence ends a turn
    assert not ends_turn(0.9, "I would like to know", 0.5)


async def test_the_transcript_made_at_the_pause_is_the_turns_without_a_second_asr_call():
    asr = LengthASR()
    async with Conversation(asr=asr, vad_silence_ms=500, vad_pause_ms=200) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.6)
        stt = await c.until("stt")
        await c.until("tts", "stop")
        # One call, made on the utterance as it was at the pause: 0.3 s of voice + ~0.2 s of
        # silence, not the 0.5 s the full silence cut with.
        assert len(asr.heard) == 1
        assert asr.heard[0] < 0.3 + 0.5
        assert stt.message.text == f"Heard {asr.heard[0]:.2f} seconds."
        (record,) = await c.turns_recorded(1)
        assert "asr_done" in record.marks and record.model_seconds["asr"] >= 0


@pytest.mark.parametrize("with_asr", [False, True], ids=["after-asr", "beside-asr"])
async def test_speech_resuming_after_a_pause_discards_the_speculation_and_the_whole_utterance_is_heard(with_asr):
    asr = LengthASR(delay=0.4)  # slower than the pause: the speaker goes on while it runs
    async with Conversation(asr=asr, vad_silence_ms=500, vad_pause_ms=200, turn=FakeTurn(0.99),
                            end_of_turn_with_asr=with_asr) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.3)  # a pause longer than 200 ms, shorter than the 500 ms that ends a turn
        await c.settle(100)  # the speculative transcription runs (and the pause sounds finished: 0.99)...
        assert c.session.speculation.pending
        c.say(0.3, silence=0.6)  # ...but the speaker goes on
        stt = await c.until("stt")
        await c.until("tts", "stop")
        # The turn's text is from the whole utterance (both parts), not from the first part.
        heard = float(stt.message.text.split()[1])
        assert heard >= 0.3 + 0.3 + 0.3
        assert c.count("stt") == 1 and len(c.records) <= 1
        assert all(seconds < heard for seconds in asr.heard[:-1])  # earlier calls were the discarded guess


@pytest.mark.parametrize("with_asr", [False, True], ids=["after-asr", "beside-asr"])
async def test_a_pause_that_sounds_and_reads_finished_is_answered_before_the_full_silence(with_asr):
    # The full silence is set far beyond what is sent: only the end-of-turn decision can end this turn.
    asr = LengthASR(words="What is the capital of France?", delay=0.4)
    turn = FakeTurn(0.9)
    async with Conversation(asr=asr, turn=turn, vad_silence_ms=5000, vad_pause_ms=200,
                            end_of_turn_with_asr=with_asr) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.6)
        await c.settle(150)  # the pause has been heard; the ASR is still running (0.4 s)
        assert not c.session.speculation._current.task.done()
        assert turn.asked == (1 if with_asr else 0)  # beside the ASR: asked while the words are coming
        stt = await c.until("stt")
        assert stt.message.text == "What is the capital of France?"
        await c.until("tts", "stop")
        assert turn.asked == 1 and len(asr.heard) == 1


async def test_the_end_of_turn_model_runs_as_urgent_work_the_listeners_step_aside_for():
    from voice.workers import vad_batcher

    counts: list[int] = []

    class Watching(FakeTurn):
        def probability(self, pcm):
            counts.append(batcher.urgency.count)  # on the VAD thread, while the call runs
            return super().probability(pcm)

    asr = LengthASR(words="What is the capital of France?")
    async with Conversation(asr=asr, turn=Watching(0.9), vad_silence_ms=5000, vad_pause_ms=200) as c:
        batcher = vad_batcher.batcher()
        await c.listen("start", "auto")
        c.say(0.3, silence=0.6)
        await c.until("stt")
        await c.until("tts", "stop")
        assert counts and all(count >= 1 for count in counts)
        assert batcher.urgency.count == 0


@pytest.mark.parametrize("probability, words", [
    (0.1, "What is the capital of France?"),  # sounds unfinished
    (0.9, "I would like to know"),  # sounds finished, but the words trail off
    (None, "What is the capital of France?"),  # no model
])
@pytest.mark.parametrize("with_asr", [False, True], ids=["after-asr", "beside-asr"])
async def test_a_pause_that_is_not_clearly_the_end_waits_for_the_full_silence(probability, words, with_asr):
    asr = LengthASR(words=words)
    async with Conversation(asr=asr, turn=FakeTurn(probability), vad_silence_ms=1500, vad_pause_ms=200,
                            end_of_turn_with_asr=with_asr) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.6)
        await c.settle(600)  # the speculative transcription is done; the silence (0.6 s) is short of 1.5 s
        assert c.labels() == ["hello"] and c.session.state == "listening"
        for packet in silence_packets(1.2):  # the rest of the silence
            c.session.handle_binary(packet)
        stt = await c.until("stt")
        assert stt.message.text == words
        assert len(asr.heard) == 1  # the full silence used the pause's transcript


async def test_no_speculation_while_the_asr_is_busy_with_others():
    asr = LengthASR()
    async with Conversation(asr=asr, vad_silence_ms=500, vad_pause_ms=200) as c:
        service = c.services["asr"]
        held = service.admission.admit("other-device")
        held.start()  # another device's call occupies the only ASR slot
        try:
            await c.listen("start", "auto")
            c.say(0.3, silence=0.3)
            await c.settle(200)
            assert asr.heard == []  # no guess queued behind the other device
        finally:
            held.finish(True)
        c.say(0.06, silence=0.6)  # goes on: the next pause finds the ASR free
        await c.until("stt")


async def test_no_pause_handling_when_disabled():
    asr = LengthASR()
    turn = FakeTurn(0.9)
    async with Conversation(asr=asr, turn=turn, vad_silence_ms=500, vad_pause_ms=0) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.6)
        await c.until("stt")
        assert turn.asked == 0
        assert len(asr.heard) == 1 and asr.heard[0] >= 0.3 + 0.5 - 0.07


async def test_closing_the_session_during_a_speculation_cancels_it():
    asr = LengthASR(delay=0.3)
    async with Conversation(asr=asr, vad_silence_ms=2000, vad_pause_ms=200) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.3)
        await c.settle(150)
        assert c.session.speculation.pending
        task = c.session.speculation._current.task
    await asyncio.sleep(0)
    assert task.cancelled() or task.done()


def test_an_end_of_turn_model_that_cannot_load_leaves_silence_to_end_turns():
    from django.test import override_settings

    from voice.pipeline.end_of_turn import load_model

    with override_settings(XIAOZHI_TURN_PROVIDER="no-such-model"):
        assert load_model() is None


async def test_by_default_the_model_is_asked_after_the_asr_and_spared_words_that_trail_off():
    asr = LengthASR(words="I would like to know")
    turn = FakeTurn(0.9)
    async with Conversation(asr=asr, turn=turn, vad_silence_ms=600, vad_pause_ms=200) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.7)
        stt = await c.until("stt")
        assert stt.message.text == "I would like to know" and turn.asked == 0


async def test_the_full_silence_takes_a_transcription_still_running_when_the_model_has_answered():
    # The model answers at once (finished), the ASR is slower than the rest of the silence: the
    # silence cuts the turn while the decision still waits for the text. Stopping that decision
    # must not cancel the transcription: the turn uses it, with no second call.
    asr = LengthASR(words="What is the capital of France?", delay=0.6)
    turn = FakeTurn(0.9)
    async with Conversation(asr=asr, turn=turn, vad_silence_ms=1000, vad_pause_ms=200, end_of_turn_with_asr=True) as c:
        await c.listen("start", "auto")
        c.say(0.3, silence=0.3)
        await c.settle(150)  # the model has said "finished"; the decision waits for the words
        assert turn.asked == 1 and c.session.speculation.pending
        for packet in silence_packets(0.8):  # the rest of the silence, while the ASR still runs
            c.session.handle_binary(packet)
        stt = await c.until("stt")
        await c.until("tts", "stop")
        assert stt.message.text == "What is the capital of France?"
        assert len(asr.heard) == 1
        (record,) = await c.turns_recorded(1)
        assert not record.error
