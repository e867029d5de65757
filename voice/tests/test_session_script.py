"""The conversation's logic on a scripted timeline: the real session, listener, pacer, turn and
dispatch seam, with the scripted fake providers and no socket (``harness.py``), a few seconds in
all. The same paths run on the bundled models over the real ASGI app in ``test_conversation.py``."""
import asyncio
import threading

import numpy as np
from django.test import override_settings

from voice.pipeline.turn import BUSY_REPLY, ERROR_REPLY
from voice.protocol import CloseCode
from voice.providers.base import VADModel, VADStream
from voice.providers.fake import FakeLLM, FakeTTS, FakeVAD
from voice.tests.harness import Conversation, dump

QUESTION = "What time is it?"
# One long first sentence (half a second of fake speech), so an interruption lands inside it.
LONG_FIRST = "Here is a long first sentence that keeps on going for quite a while."
TWO_SENTENCES = f"{LONG_FIRST} And a second one."


async def test_an_auto_mode_turn_is_heard_answered_and_closed():
    async with Conversation(llm=FakeLLM("It is noon. Time for lunch.")) as c:
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("tts", "stop")
        [record] = await c.turns_recorded(1)
        assert c.labels() == ["hello", "stt", "tts:start", "llm", "tts:sentence_start", "audio",
                              "tts:sentence_start", "audio", "tts:stop"], dump(c.sent)
        assert c.states() == ["idle", "thinking", "speaking", "listening"], dump(c.sent)
        assert c.session.state == "listening"
        assert (record.user_text, record.reply_text, record.error, record.interrupted) == (
            QUESTION, "It is noon. Time for lunch.", "", False)
        assert list(c.session.history) == [(QUESTION, "It is noon. Time for lunch.")]


async def test_abort_stops_the_reply_once_and_keeps_listening():
    async with Conversation(llm=FakeLLM(TWO_SENTENCES)) as c:
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("audio")
        await c.abort()
        stop = await c.until("tts", "stop")
        await c.settle()
        after = c.sent[c.sent.index(stop) + 1:]
        assert after == [], dump(c.sent)  # no audio (nor anything else) after tts stop
        assert c.count("tts:stop") == 1 and c.count("tts:start") == 1
        assert stop.state == "listening" and c.session.state == "listening"
        [record] = await c.turns_recorded(1)
        assert record.error == "aborted"
        # the socket is good for another turn
        c.say(0.3)
        await c.until("tts", "stop", after=len(c.sent))
        assert c.count("stt") == 2


async def test_an_interrupted_reply_is_kept_as_far_as_it_was_heard():
    # 1.4 s of first sentence: the abort lands in it even on a loaded machine (spoken whole: no
    # early cut of a long first sentence, XIAOZHI_FIRST_CLAUSE_MAX_WORDS)
    with override_settings(XIAOZHI_FIRST_CLAUSE_MAX_WORDS=0):
        await _interrupted_reply_is_kept()


async def _interrupted_reply_is_kept():
    async with Conversation(llm=FakeLLM(TWO_SENTENCES), tts=FakeTTS(seconds_per_word=0.1)) as c:
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("audio")  # the first sentence is playing; the second is still in the queue
        await c.abort()
        [record] = await c.turns_recorded(1)
        assert record.interrupted and record.error == "aborted"
        assert record.reply_text == LONG_FIRST
        assert list(c.session.history) == [(QUESTION, LONG_FIRST)]
        assert c.sentences() == [LONG_FIRST]


async def test_speech_over_the_reply_in_realtime_mode_is_barge_in():
    with override_settings(XIAOZHI_FIRST_CLAUSE_MAX_WORDS=0):  # the long first sentence spoken whole
        await _barge_in()


async def _barge_in():
    async with Conversation(llm=FakeLLM(LONG_FIRST), tts=FakeTTS(seconds_per_word=0.06)) as c:
        await c.listen("start", "realtime")
        c.say(0.3)
        await c.until("audio")
        barge_in = len(c.sent)
        c.say(0.3)  # the user talks over the answer
        stop = await c.until("tts", "stop")
        at_stop = c.sent.index(stop)
        # while the VAD heard the new speech, only the answer's audio went on
        assert {sent.kind for sent in c.sent[barge_in:at_stop]} <= {"audio"}, dump(c.sent)
        await c.until("tts", "stop", after=at_stop + 1)
        first, second = await c.turns_recorded(2)
        assert c.labels(since=at_stop) == ["tts:stop", "stt", "tts:start", "llm", "tts:sentence_start", "audio",
                                           "tts:stop"], dump(c.sent)
        assert c.count("tts:start") == 2 and c.count("tts:stop") == 2
        assert (first.interrupted, first.error, first.reply_text) == (True, "aborted", LONG_FIRST)
        assert (second.interrupted, second.error, second.reply_text) == (False, "", LONG_FIRST)
        assert c.session.state == "listening"


async def test_manual_mode_answers_on_listen_stop_and_goes_idle():
    async with Conversation() as c:
        await c.listen("start", "manual")
        c.say(0.6, silence=0)
        await c.settle(50)
        assert c.labels() == ["hello"]  # manual mode waits for the button, not for silence
        await c.listen("stop")
        stop = await c.until("tts", "stop")
        assert c.labels() == ["hello", "stt", "tts:start", "llm", "tts:sentence_start", "audio", "tts:stop"]
        assert stop.state == "idle" and c.session.state == "idle"
        assert c.states() == ["idle", "thinking", "speaking", "idle"]


async def test_a_listen_stop_waits_for_the_batch_the_vad_is_still_hearing():
    """The input loop took every packet and is out at the VAD when ``listen stop`` comes: the stop's
    drain finds the queue empty, and must still wait for that batch before taking the utterance (a
    fault test on a loaded machine lost whole push-to-talk turns to this: no ``stt`` at all)."""
    async with Conversation() as c:
        await c.listen("start", "manual")
        entered, release = threading.Event(), threading.Event()
        decode = c.session.listener.decode

        def held_decode(packets):
            entered.set()
            release.wait(5)
            return decode(packets)

        c.session.listener.decode = held_decode
        c.say(0.6, silence=0)
        assert await asyncio.to_thread(entered.wait, 5)  # the batch is out, the queue empty
        assert not c.session._pending
        stop = asyncio.ensure_future(c.listen("stop"))
        await c.settle(100)
        release.set()
        await stop
        await c.until("tts", "stop")
        assert c.labels() == ["hello", "stt", "tts:start", "llm", "tts:sentence_start", "audio", "tts:stop"], dump(c.sent)


async def test_a_press_too_short_to_be_speech_is_ignored():
    async with Conversation() as c:
        await c.listen("start", "manual")
        c.say(0.12, silence=0)
        await c.listen("stop")
        await c.settle()
        assert c.labels() == ["hello"] and c.session.state == "idle"


async def test_a_full_service_is_answered_with_a_spoken_busy_notice():
    async with Conversation() as c:
        asr = c.services["asr"]
        held = [asr.admission.admit(f"other-{i}") for i in range(asr.limits.max_concurrent + asr.limits.queue_size)]
        try:
            await c.listen("start", "auto")
            c.say(0.3)
            stop = await c.until("tts", "stop")
        finally:
            for ticket in held:
                ticket.finish(False)
        assert c.labels() == ["hello", "tts:start", "tts:sentence_start", "audio", "tts:stop"], dump(c.sent)
        assert c.sentences() == [BUSY_REPLY]
        assert stop.state == "listening" and c.count("tts:stop") == 1
        assert asr.occupancy()["rejected"] == 1


async def test_a_failing_llm_is_answered_with_an_apology_and_one_tts_stop():
    async with Conversation(llm=FakeLLM("Never said.", fail_after=0)) as c:
        await c.listen("start", "auto")
        c.say(0.3)
        stop = await c.until("tts", "stop")
        [record] = await c.turns_recorded(1)
        await c.settle()
        assert c.labels() == ["hello", "stt", "tts:start", "tts:sentence_start", "audio", "tts:stop"], dump(c.sent)
        assert c.sentences() == [ERROR_REPLY]
        assert stop.state == "listening" and c.count("tts:stop") == 1
        assert record.error.startswith("LLMError") and not record.interrupted
        assert list(c.session.history) == []


async def test_the_agents_llm_model_reaches_the_llm():
    llm = FakeLLM()
    async with Conversation(llm=llm, llm_model="qwen2.5:7b") as c:
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("tts", "stop")
    assert llm.models == ["qwen2.5:7b"]


async def test_an_unbound_device_hears_its_code_instead_of_an_answer():
    async with Conversation(activated=False, activation_code="123456", tts=FakeTTS(seconds_per_word=0.01)) as c:
        await c.listen("start", "auto")
        await c.until("tts", "stop")
        assert c.sentences() == ["This device is not activated yet. Please enter the code 1 2 3 4 5 6 in the admin console."]
        c.say(0.3)  # an utterance gets the prompt again at once, and no answer
        await c.until("tts", "stop", after=len(c.sent))
        assert c.count("stt") == 0 and len(c.sentences()) == 2


async def test_no_hello_in_time_closes_the_socket():
    async with Conversation(hello=False, hello_timeout=0.05) as c:
        closed = await c.until("close")
        assert closed.message == (CloseCode.HELLO_TIMEOUT, "no hello")


def test_the_fake_vad_is_a_vad():
    vad = FakeVAD()
    assert isinstance(vad, VADModel) and isinstance(vad.new_stream(), VADStream)
    stream = vad.new_stream()
    tone = np.sin(np.arange(960, dtype=np.float32) / 5) * 0.3
    assert stream.probabilities(tone) == [1.0]  # one full chunk; 448 samples wait
    assert stream.probabilities(np.zeros(960, np.float32)) == [1.0, 0.0]  # the rest of the tone, then silence


class WaitingLLM(FakeLLM):
    """Heartbeats (empty deltas) first, as the bundled LLM yields while its reply waits for a turn
    on the model (``voice/providers/llm/interleave.py``), then the scripted reply."""

    def stream(self, messages, cancel, tools=None, model=None):
        for _ in range(3):
            cancel.wait(0.05)
            yield ""
        yield from super().stream(messages, cancel, tools, model)


async def test_heartbeats_of_a_waiting_reply_are_not_its_first_token():
    async with Conversation(llm=WaitingLLM("It is noon.")) as c:
        await c.listen("start", "manual")
        c.say(0.6, silence=0)
        await c.listen("stop")
        await c.until("tts", "stop")
        [record] = await c.turns_recorded(1)
        assert c.sentences() == ["It is noon."] and record.reply_text == "It is noon."
        assert record.model_seconds["llm_first_token"] >= 0.15  # the words' arrival, not the first heartbeat

