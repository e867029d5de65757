"""Edge TTS against a local fake of the service (voice/tests/fake_edge.py): edge-tts and the
provider run unmodified, only the remote endpoint is ours. The audio it serves is real MP3 made
from Piper speech, so decoding is tested on speech, not on a tone."""
import json

import numpy as np
import pytest

from voice.audio.resample import resample
from voice.providers.base import ProviderUnavailable
from voice.providers.errors import TTSError
from voice.providers.tts.edge import SAMPLE_RATE, EdgeTTS
from voice.tests.fake_edge import FakeEdgeServer, encode_mp3

pytestmark = pytest.mark.models

QUESTION = "What is the capital of France?"


def envelope_similarity(a: np.ndarray, b: np.ndarray, frame: int = 240) -> float:
    """How well the loudness contours (10 ms frames) of two signals match, at the best shift within
    100 ms: MP3 at 48 kbit/s keeps what is heard, not the waveform, and adds the codec's delay."""
    def envelope(x):
        x = x[: len(x) // frame * frame].astype(np.float64).reshape(-1, frame)
        return np.sqrt((x**2).mean(axis=1))

    ea, eb = envelope(a), envelope(b)
    best = -1.0
    for shift in range(-10, 11):
        x, y = (ea[shift:], eb) if shift >= 0 else (ea, eb[-shift:])
        n = min(len(x), len(y))
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


@pytest.fixture(scope="module")
def speech():
    """Piper saying a sentence, at Edge's 24 kHz: what the fake service encodes and sends."""
    from voice.providers import registry

    piper = registry.get_tts("piper")
    pcm = np.concatenate(list(piper.synthesize("The capital of France is Paris, a city on the Seine.")))
    return resample(pcm, piper.sample_rate, SAMPLE_RATE)


@pytest.fixture
def edge_server(speech):
    server = FakeEdgeServer(encode_mp3(speech)).start()
    yield server
    server.stop()


def test_mp3_from_the_service_comes_out_as_pcm_of_the_same_speech_in_several_chunks(edge_server, speech):
    tts = EdgeTTS(url=edge_server.url)
    chunks = list(tts.synthesize("Tell me about Paris."))
    assert tts.sample_rate == 24000
    assert len(chunks) >= 3 and all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    pcm = np.concatenate(chunks)
    assert abs(len(pcm) - len(speech)) <= 1152  # within one MP3 frame pair of the source
    assert envelope_similarity(pcm, speech) > 0.9, "decoded audio does not follow the speech that was encoded"
    assert [r.text for r in edge_server.requests] == ["Tell me about Paris."]


def test_first_audio_leaves_before_the_service_has_sent_it_all(edge_server):
    """The service holds back the second half of the MP3 until the first PCM chunk is out: a
    provider that waited for the whole reply would never yield (and would time out)."""
    chunks = EdgeTTS(url=edge_server.url, timeout=5).synthesize("Please hold the line.")
    first = next(chunks)  # only the test sets `release`: a provider that waited for it times out here
    assert first.size > 0
    # The first chunk may leave before the service reaches its pause; it must then be holding.
    assert edge_server.held.wait(5) and not edge_server.release.is_set()
    assert len(edge_server.requests) == 1
    edge_server.release.set()
    assert sum(c.size for c in chunks) > first.size


def test_the_agent_voice_is_sent_and_the_default_voice_otherwise(edge_server):
    tts = EdgeTTS(default_voice="en-US-AriaNeural", url=edge_server.url)
    list(tts.synthesize("Hello."))
    list(tts.synthesize("你好。", "zh-CN-XiaoxiaoNeural"))
    voices = [r.voice for r in edge_server.requests]
    assert voices == [
        "Microsoft Server Speech Text to Speech Voice (en-US, AriaNeural)",
        "Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)",
    ]


def test_nothing_to_say_sends_no_request(edge_server):
    assert list(EdgeTTS(url=edge_server.url).synthesize(" ... ")) == []
    assert edge_server.requests == []


def test_a_service_that_sends_no_audio_is_a_tts_error(edge_server):
    with pytest.raises(TTSError, match="NoAudioReceived"):
        list(EdgeTTS(url=edge_server.url).synthesize("Please refuse this."))


def test_a_stalled_service_is_a_tts_error_after_the_timeout(edge_server):
    with pytest.raises(TTSError, match="timed out"):
        list(EdgeTTS(url=edge_server.url, timeout=0.5).synthesize("Please stall."))


def test_an_unreachable_service_is_a_tts_error():
    with pytest.raises(TTSError, match="Cannot connect"):
        list(EdgeTTS(url="ws://127.0.0.1:9/edge/v1?TrustedClientToken=x", timeout=2).synthesize("Hello."))


def test_a_malformed_agent_voice_is_a_tts_error_naming_it(edge_server):
    with pytest.raises(TTSError, match="agent's voice='en_US-joe-medium'"):
        list(EdgeTTS(url=edge_server.url).synthesize("Hello.", "en_US-joe-medium"))
    assert edge_server.requests == []


@pytest.mark.parametrize("voice", ["en-US-AriaNeural", "zh-CN-XiaoxiaoNeural", "zh-CN-liaoning-XiaobeiNeural"])
def test_well_formed_voices_build_without_touching_the_network(voice):
    assert EdgeTTS(default_voice=voice, url="ws://127.0.0.1:9/nowhere").default_voice == voice


@pytest.mark.parametrize("voice", ["", "Aria", "en-US-Aria", "en_US-joe-medium", "en-US-AriaNeural; drop"])
def test_a_malformed_default_voice_refuses_to_start_naming_the_setting(voice):
    with pytest.raises(ProviderUnavailable, match="XIAOZHI_EDGE_TTS_VOICE"):
        EdgeTTS(default_voice=voice)


def test_start_up_checks_name_a_bad_edge_voice(settings):
    from voice.checks import check_voice_settings

    settings.XIAOZHI_TTS_PROVIDER = "edge"
    settings.XIAOZHI_EDGE_TTS_VOICE = "en-US-AriaNeural"
    assert check_voice_settings() == []
    settings.XIAOZHI_EDGE_TTS_VOICE = "Aria"
    errors = check_voice_settings()
    assert [e.id for e in errors] == ["voice.E007"] and "XIAOZHI_EDGE_TTS_VOICE" in errors[0].msg


# --- one conversation through the session, the agent speaking with Edge ------------------------------


@pytest.fixture
def edge_agent(edge_server, settings):
    from devices.models import AgentConfig
    from voice.providers import registry

    settings.XIAOZHI_EDGE_TTS_URL = edge_server.url
    registry.forget("tts", "edge")
    AgentConfig.objects.create(name="edge", tts_provider="edge", voice="en-GB-SoniaNeural", is_default=True)
    yield edge_server
    registry.forget("tts", "edge")


@pytest.mark.django_db(transaction=True)
async def test_a_conversation_with_an_edge_agent_gets_audio_and_tts_stop(edge_agent, connect_device, say):
    from voice.audio.opus import OpusDecoder

    device = await connect_device()
    result = await device.turn(say(QUESTION), mode="manual")
    assert "capital" in result.stt.lower()
    assert result.sentences and result.stopped
    decoder = OpusDecoder(device.server_hello.audio_params.sample_rate, 1)
    assert sum(len(decoder.decode(frame)) for frame in result.audio) > 0 and decoder.errors == 0
    assert edge_agent.requests and {r.voice for r in edge_agent.requests} == {
        "Microsoft Server Speech Text to Speech Voice (en-GB, SoniaNeural)"
    }
    await device.close()


@pytest.mark.django_db(transaction=True)
async def test_a_failing_edge_service_ends_the_turn_with_tts_stop_and_the_socket_stays_usable(
    edge_agent, connect_device, say
):
    from devices.models import Turn
    from voice.protocol import Pong

    edge_agent.mp3 = b""  # the service answers, but with no audio at all
    device = await connect_device()
    result = await device.turn(say(QUESTION), mode="manual")
    assert "capital" in result.stt.lower()
    states = [getattr(e.message, "state", None) for e in result.events]
    assert states.count("start") == 1 and states.count("stop") == 1 and result.stopped
    turn = await Turn.objects.aget()
    assert "TTSError" in turn.error
    since = len(device.events)
    await device.send_json(json.dumps({"type": "ping"}))
    await device.wait_for(lambda e: isinstance(e.message, Pong), 3, since=since)
    await device.close()
