"""A Chinese conversation through the generic OpenAI-compatible providers (ASR, LLM and TTS all
``openai``), over the real ASGI app, with a local fake OpenAI-compatible server at the remote
boundary: the subtitles carry the Chinese text, the first sentence is cut at Chinese punctuation and
spoken while the model is still writing, and the stored turn (MySQL: utf8mb4) reads back equal,
emoji included. Run it with DATABASE_URL=mysql://... for the MySQL half of that claim."""
import asyncio
import os

import pytest

from devices.models import AgentConfig, Turn
from voice.audio.opus import OpusDecoder
from voice.protocol import Stt, Tts
from voice.providers import registry
from voice.tests.fake_openai_server import CHAT, SPEECH, TRANSCRIPTIONS, FakeOpenAIServer

pytestmark = [
    pytest.mark.models,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        os.environ.get("XIAOZHI_WORKER_BACKEND") == "celery",
        reason="the providers then run in the Celery workers started at session start, whose settings this test cannot point at its server",
    ),
]

# What the device's user says (the bundled English voice reading pinyin: no Chinese voice is
# bundled; the fake server stands for the recogniser) and what the fake recogniser hears.
UTTERANCE = "Ni hao. Jin tian Bei jing tian qi zen me yang?"
TRANSCRIPT = "你好，今天北京天气怎么样？"
# The reply as the model streams it, cut mid-word as tokens are.
REPLY = ["今天", "北京天气", "很好，阳", "光明媚，气温", "二十度。适合出门", "散步哦😊"]
SENTENCES = ["今天北京天气很好，", "阳光明媚，气温二十度。", "适合出门散步哦"]


@pytest.fixture
def remote(settings):
    server = FakeOpenAIServer().start()
    server.transcript = TRANSCRIPT
    server.reply = REPLY
    for kind in ("asr", "llm", "tts"):
        setattr(settings, f"XIAOZHI_{kind.upper()}_BASE_URL", server.url)
        registry.forget(kind, "openai")
    yield server
    for kind in ("asr", "llm", "tts"):
        registry.forget(kind, "openai")
    server.stop()


def is_tts(state):
    return lambda e: isinstance(e.message, Tts) and e.message.state == state


async def test_a_chinese_turn_through_the_openai_compatible_providers(remote, connect_device, say):
    await AgentConfig.objects.acreate(
        name="小智（中文）", system_prompt="你是小智，请用中文简短回答。", voice="zh-CN-xiaoxiao",
        asr_provider="openai", llm_provider="openai", tts_provider="openai", is_default=True,
    )
    remote.chat_hold_after = 3  # the model stops after "很好，阳" until the test has heard the first clause
    device = await connect_device()
    turn = asyncio.create_task(device.turn(say(UTTERANCE), mode="auto", timeout=60))

    first = await device.wait_for(is_tts("sentence_start"), 40)
    assert first.message.text == SENTENCES[0], "the first clause is cut at the Chinese comma"
    await device.wait_for(lambda e: e.kind == "audio", 10, since=device.events.index(first))
    assert remote.chat_held.is_set() and not remote.chat_release.is_set(), "heard while the model is still writing"
    remote.chat_release.set()
    result = await turn

    assert result.stt == TRANSCRIPT
    assert result.sentences == SENTENCES
    assert result.stopped
    stt_at = next(i for i, e in enumerate(result.events) if isinstance(e.message, Stt))
    start_at = next(i for i, e in enumerate(result.events) if is_tts("start")(e))
    audio_at = next(i for i, e in enumerate(result.events) if e.kind == "audio")
    assert stt_at < start_at < audio_at
    decoder = OpusDecoder(device.server_hello.audio_params.sample_rate, 1)
    assert sum(len(decoder.decode(f)) for f in result.audio) > 0 and decoder.errors == 0

    # what reached the remote services
    (heard,) = remote.of(TRANSCRIPTIONS)
    assert heard.wav[:3] == (1, 2, 16000) and heard.wav[3] > 16000, "the whole utterance, as a 16 kHz WAV"
    (chat,) = remote.of(CHAT)
    assert chat.fields["messages"][0]["content"] == "你是小智，请用中文简短回答。"
    assert chat.fields["messages"][-1] == {"role": "user", "content": TRANSCRIPT}
    spoken = remote.of(SPEECH)
    assert [r.fields["input"] for r in spoken] == SENTENCES
    assert {r.fields["voice"] for r in spoken} == {"zh-CN-xiaoxiao"}

    await device.close()
    stored = await Turn.objects.aget()
    assert stored.user_text == TRANSCRIPT
    assert stored.reply_text == "".join(REPLY), "Chinese and emoji read back as written"
    assert not stored.error
    assert (await AgentConfig.objects.aget()).name == "小智（中文）"
