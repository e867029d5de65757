"""The wake-word greeting (``listen detect`` with AgentConfig.wake_greeting): spoken as a reply of
its own, from the phrase cache after the first time, never answered as a question, interruptible.
The scripted session (``harness.py``) first, then the same over the real ASGI app with the
bundled voice."""
import pytest

from voice.pipeline.phrase_cache import PHRASES, PhraseCache
from voice.protocol import Listen, Mcp, Stt, Tts
from voice.providers.fake import FakeLLM, FakeTTS
from voice.tests.harness import Conversation, dump

GREETING = "Yes? I am listening."


class CountingTTS(FakeTTS):
    """The scripted voice, counting how often it is asked to synthesise."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.texts: list[str] = []

    def synthesize(self, text, voice=None):
        self.texts.append(text)
        return super().synthesize(text, voice)


@pytest.fixture(autouse=True)
def empty_phrase_cache():
    PHRASES.clear()
    yield
    PHRASES.clear()


async def detect(c: Conversation, wake_word: str = "Hi ESP") -> None:
    """What the firmware sends on a wake word: ``detect``, then ``listen start`` at once."""
    await c.send(Listen("detect", text=wake_word))
    await c.listen("start", "auto")


async def test_the_greeting_is_spoken_on_the_wake_word_and_not_answered():
    tts = CountingTTS(seconds_per_word=0.03)
    async with Conversation(tts=tts, llm=FakeLLM("An answer nobody asked for."), wake_greeting=GREETING) as c:
        await detect(c)
        await c.until("tts", "stop")
        await c.settle(300)
        assert c.labels() == ["hello", "tts:start", "tts:sentence_start", "audio", "tts:stop"], dump(c.sent)
        assert c.sentences() == [GREETING]
        assert c.count("stt") == 0 and c.records == []  # the wake word was not taken for a question
        assert tts.texts == [GREETING]
        assert c.session.state == "listening" and list(c.session.history) == []


async def test_no_greeting_when_blank():
    tts = CountingTTS(seconds_per_word=0.03)
    async with Conversation(tts=tts, wake_greeting="") as c:
        await detect(c)
        await c.settle(300)
        assert c.labels() == ["hello"], dump(c.sent)
        assert tts.texts == []


async def test_the_second_greeting_comes_from_the_cache():
    tts = CountingTTS(seconds_per_word=0.03)
    async with Conversation(tts=tts, wake_greeting=GREETING) as c:
        await detect(c)
        first_stop = await c.until("tts", "stop")
        first_audio = [s.message for s in c.sent if s.kind == "audio"]
        mark = c.sent.index(first_stop) + 1
        await detect(c)
        await c.until("tts", "stop", after=mark)
        second_audio = [s.message for s in c.sent[mark:] if s.kind == "audio"]
        assert tts.texts == [GREETING]  # synthesised once
        assert (PHRASES.misses, PHRASES.hits) == (1, 1)
        assert second_audio == first_audio and first_audio
        assert c.labels(since=mark) == ["tts:start", "tts:sentence_start", "audio", "tts:stop"], dump(c.sent)


async def test_abort_during_the_greeting_stops_it_once_and_it_is_not_cached():
    tts = CountingTTS(seconds_per_word=0.4)  # 1.6 s of greeting: the abort lands in it
    async with Conversation(tts=tts, wake_greeting=GREETING) as c:
        await detect(c)
        await c.until("audio")
        await c.abort()
        stop = await c.until("tts", "stop")
        await c.settle(300)
        assert c.count("tts:stop") == 1, dump(c.sent)
        assert c.sent[-1] is stop  # nothing after the stop
        assert c.session.state == "listening"
        # a normal question still gets its answer afterwards
        c.say(0.3)
        await c.until("stt", after=len(c.sent))


async def test_a_question_after_the_greeting_is_answered():
    async with Conversation(tts=CountingTTS(seconds_per_word=0.03), llm=FakeLLM("It is noon."),
                            wake_greeting=GREETING) as c:
        await detect(c)
        stop = await c.until("tts", "stop")
        mark = c.sent.index(stop) + 1
        await c.listen("start", "auto")  # the device listens again after the greeting's stop
        c.say(0.3)
        await c.until("tts", "stop", after=mark)
        assert c.labels(since=mark)[:3] == ["stt", "tts:start", "llm"], dump(c.sent)
        [record] = await c.turns_recorded(1)
        assert record.reply_text == "It is noon."


def test_the_cache_is_bounded_and_least_recently_used_goes_first():
    cache = PhraseCache(size=2, max_frames=3)
    cache.put(("p", "", 24000, "a"), (b"1",))
    cache.put(("p", "", 24000, "b"), (b"2",))
    assert cache.get(("p", "", 24000, "a")) == (b"1",)  # a is now the most recent
    cache.put(("p", "", 24000, "c"), (b"3",))
    assert cache.get(("p", "", 24000, "b")) is None and len(cache) == 2
    cache.put(("p", "", 24000, "long"), (b"x",) * 4)  # longer than a greeting: not kept
    assert cache.get(("p", "", 24000, "long")) is None
    assert cache.get(("p", "v2", 24000, "a")) is None  # another voice is another phrase


# -- over the real ASGI app, with the bundled voice -------------------------------------------------------
async def test_a_device_hears_its_agents_greeting_over_the_socket(connect_device):
    from channels.db import database_sync_to_async

    from devices.models import AgentConfig

    await database_sync_to_async(AgentConfig.objects.create)(name="greeter", is_default=True, wake_greeting="Yes?")
    device = await connect_device()
    since = len(device.events)
    await device.listen("detect", text="Hi ESP")
    await device.listen("start", "auto")
    is_stop = lambda e: e.kind == "json" and isinstance(e.message, Tts) and e.message.state == "stop"  # noqa: E731
    stop = await device.wait_for(is_stop, 60, since)
    # The device's MCP exchange (tools listed after the hello) runs beside the greeting: not part of it.
    got = [e for e in device.events[since:device.events.index(stop) + 1] if not isinstance(e.message, Mcp)]
    labels = [f"{e.message.TYPE}:{getattr(e.message, 'state', '')}" if e.kind == "json" else e.kind for e in got]
    assert not any(isinstance(e.message, Stt) for e in got), labels
    assert labels[:2] == ["tts:start", "tts:sentence_start"] and labels[-1] == "tts:stop", labels
    assert got[1].message.text == "Yes?"
    assert labels.count("audio") > 3
    assert PHRASES.misses == 1
