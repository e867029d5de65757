"""The OpenAI-compatible ASR and TTS against a real HTTP server on 127.0.0.1 (``fake_openai_server``)
that answers as scripted: what is sent, streaming, retries, the breaker, timeouts and refusals."""

import numpy as np
import pytest

from voice import live_stats
from voice.providers.asr.openai_asr import OpenAICompatibleASR
from voice.providers.base import ProviderUnavailable
from voice.providers.breaker import CLOSED, OPEN
from voice.providers.errors import ASRError, CircuitOpen, TTSError
from voice.providers.remote import RetryPolicy
from voice.providers.tts.openai_tts import OpenAICompatibleTTS
from voice.tests.fake_openai_server import PCM_RATE, SPEECH, TRANSCRIPTIONS, FakeOpenAIServer

CHINESE = "今天天气怎么样？"


@pytest.fixture
def server():
    fake = FakeOpenAIServer().start()
    yield fake
    fake.stop()


def policy(**options):
    return RetryPolicy(**{"retries": 2, "backoff": 0.01, "breaker_failures": 5, "breaker_cooldown": 30.0, **options})


def asr_for(server, timeout=5.0, **options):
    return OpenAICompatibleASR(server.url, api_key="secret", model="sensevoice", language="zh", timeout=timeout,
                               policy=policy(**options))


def tts_for(server, response_format="pcm", timeout=5.0, **options):
    return OpenAICompatibleTTS(server.url, api_key="secret", model="tts-zh", voice="xiaoxiao",
                               response_format=response_format, timeout=timeout, policy=policy(**options))


def speech(seconds=1.0):
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def spoken(tts, text="你好，世界。", voice=None):
    chunks = list(tts.synthesize(text, voice))
    assert all(c.dtype == np.int16 for c in chunks)
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


# --- ASR -------------------------------------------------------------------------------------------------


def test_the_utterance_is_sent_as_a_16khz_wav_with_the_model_and_language_and_the_transcript_comes_back(server):
    server.transcript = CHINESE
    assert asr_for(server).transcribe(speech(1.5)) == CHINESE
    (request,) = server.of(TRANSCRIPTIONS)
    assert request.wav == (1, 2, 16000, 24000)
    assert request.fields == {"model": "sensevoice", "language": "zh", "response_format": "json"}
    assert request.headers["Authorization"] == "Bearer secret"


def test_no_language_lets_the_server_detect_it(server):
    OpenAICompatibleASR(server.url).transcribe(speech())
    assert "language" not in server.of(TRANSCRIPTIONS)[0].fields


def test_an_utterance_too_short_to_hold_a_word_is_not_sent(server):
    assert asr_for(server).transcribe(speech(0.05)) == ""
    assert not server.requests


def test_a_dropped_connection_and_a_5xx_are_retried_until_the_transcript_comes(server):
    server.script[TRANSCRIPTIONS] = ["drop", "503"]
    before = live_stats.snapshot()["counters"].get("asr_retries", 0)
    asr = asr_for(server)
    assert asr.transcribe(speech()) == server.transcript
    assert len(server.requests) == 3
    assert live_stats.snapshot()["counters"]["asr_retries"] - before == 2
    assert asr.breaker.state == CLOSED


def test_retries_give_up_with_the_last_error(server):
    server.script[TRANSCRIPTIONS] = ["500"] * 5
    with pytest.raises(ASRError, match=r"ASR server http://127.0.0.1:\d+/v1/audio/transcriptions answered HTTP 500"):
        asr_for(server, retries=1).transcribe(speech())
    assert len(server.requests) == 2


def test_a_client_error_is_refused_at_once_with_the_servers_words(server):
    server.script[TRANSCRIPTIONS] = ["401"]
    asr = asr_for(server, breaker_failures=1)
    with pytest.raises(ASRError, match="HTTP 401.*scripted 401"):
        asr.transcribe(speech())
    assert len(server.requests) == 1 and asr.breaker.state == CLOSED


def test_the_breaker_opens_and_then_fails_fast_without_a_request(server):
    server.script[TRANSCRIPTIONS] = ["500"] * 3
    asr = asr_for(server, retries=0, breaker_failures=3)
    for _ in range(3):
        with pytest.raises(ASRError, match="HTTP 500"):
            asr.transcribe(speech())
    assert asr.breaker.state == OPEN
    before = live_stats.snapshot()["counters"].get("asr_breaker_rejected", 0)
    with pytest.raises(CircuitOpen, match="ASR server .* circuit open"):
        asr.transcribe(speech())
    assert len(server.requests) == 3
    assert live_stats.snapshot()["counters"]["asr_breaker_rejected"] - before == 1


def test_a_server_that_stalls_times_out(server):
    server.script[TRANSCRIPTIONS] = ["stall"]
    server.stall_seconds = 3.0
    with pytest.raises(ASRError, match="timed out"):
        asr_for(server, timeout=0.5).transcribe(speech())
    assert len(server.requests) == 1  # a read timeout has spent the time a retry would need


def test_a_reply_without_a_transcript_is_a_clear_error(server):
    server.script[TRANSCRIPTIONS] = ["json"]
    with pytest.raises(ASRError, match='no transcript .*"text"'):
        asr_for(server).transcribe(speech())


def test_an_unreachable_server_is_an_asr_error():
    asr = OpenAICompatibleASR("http://127.0.0.1:9/v1", timeout=2, policy=policy(retries=0))
    with pytest.raises(ASRError, match="ConnectError"):
        asr.transcribe(speech())


def test_no_server_configured_names_the_setting():
    with pytest.raises(ProviderUnavailable, match="XIAOZHI_ASR_BASE_URL"):
        OpenAICompatibleASR("")


# --- TTS -------------------------------------------------------------------------------------------------


def test_speech_is_asked_for_with_model_voice_and_format_and_the_agents_voice_wins(server):
    tts = tts_for(server)
    spoken(tts, "你好。")
    spoken(tts, "你好。", voice="yunxi")
    first, second = server.of(SPEECH)
    assert first.fields == {"model": "tts-zh", "input": "你好。", "voice": "xiaoxiao", "response_format": "pcm"}
    assert second.fields["voice"] == "yunxi"
    assert first.headers["Authorization"] == "Bearer secret"


def test_pcm_streams_the_first_audio_before_the_body_has_ended(server):
    """The server sends the first half and then waits for the test: the first chunk is out of the
    provider while the body has not ended, so the device hears the sentence's start while the rest
    is being made."""
    server.hold = True
    tts = tts_for(server)
    assert tts.sample_rate == PCM_RATE
    stream = tts.synthesize("你好，世界。")
    first = next(stream)
    assert first.size > 0
    assert server.held.wait(10) and not server.release.is_set()
    server.release.set()
    rest = list(stream)
    # every sample arrives, a sample split across two network chunks included
    assert first.size + sum(c.size for c in rest) == int(server.seconds * PCM_RATE)
    assert len(rest) < 7, "later chunks are gathered"


def test_a_streamed_wav_of_unknown_length_at_another_rate_is_resampled(server):
    server.wav_rate = 22050
    pcm = spoken(tts_for(server, "wav"))
    assert abs(pcm.size - PCM_RATE * server.seconds) < PCM_RATE * 0.02
    assert np.abs(pcm).max() > 4000  # the tone, not silence


def test_mp3_is_decoded_as_it_streams(server):
    server.hold = True
    stream = tts_for(server, "mp3").synthesize("你好。")
    first = next(stream)
    assert first.size > 0
    assert server.held.wait(10) and not server.release.is_set()
    server.release.set()
    total = first.size + sum(c.size for c in stream)
    assert abs(total - PCM_RATE * server.seconds) < PCM_RATE * 0.1


def test_a_5xx_and_a_dropped_connection_are_retried_before_any_audio(server):
    server.script[SPEECH] = ["503", "drop"]
    before = live_stats.snapshot()["counters"].get("tts_retries", 0)
    assert spoken(tts_for(server)).size == PCM_RATE
    assert len(server.requests) == 3
    assert live_stats.snapshot()["counters"]["tts_retries"] - before == 2


def test_a_client_error_is_a_clear_tts_error_and_not_retried(server):
    server.script[SPEECH] = ["400"]
    tts = tts_for(server, breaker_failures=1)
    with pytest.raises(TTSError, match="TTS server .*/v1/audio/speech answered HTTP 400.*scripted 400"):
        spoken(tts)
    assert len(server.requests) == 1 and tts.breaker.state == CLOSED


def test_the_tts_breaker_opens_after_failures_in_a_row(server):
    server.script[SPEECH] = ["500", "500"]
    tts = tts_for(server, retries=0, breaker_failures=2)
    for _ in range(2):
        with pytest.raises(TTSError, match="HTTP 500"):
            spoken(tts)
    with pytest.raises(CircuitOpen, match="TTS server"):
        spoken(tts)
    assert len(server.requests) == 2


def test_a_stalled_speech_server_times_out(server):
    server.script[SPEECH] = ["stall"]
    server.stall_seconds = 3.0
    with pytest.raises(TTSError, match="timed out"):
        spoken(tts_for(server, timeout=0.5))


def test_a_json_reply_instead_of_audio_is_a_clear_error(server):
    server.script[SPEECH] = ["json"]
    tts = tts_for(server, breaker_failures=1)
    with pytest.raises(TTSError, match="application/json instead of audio.*not what was asked for"):
        spoken(tts)
    assert tts.breaker.state == OPEN, "a server answering nonsense counts against it"


def test_a_reader_that_walks_away_leaves_the_breaker_as_it_was(server):
    tts = tts_for(server, breaker_failures=1)
    stream = tts.synthesize("你好，世界。")
    next(stream)
    stream.close()  # the turn was aborted
    assert tts.breaker.state == CLOSED and tts.breaker.snapshot()["consecutive_failures"] == 0
    assert spoken(tts).size == PCM_RATE


def test_a_sentence_without_anything_to_say_asks_nothing(server):
    assert spoken(tts_for(server), "……").size == 0
    assert not server.requests


def test_an_unsupported_format_is_refused_at_start():
    with pytest.raises(ProviderUnavailable, match="XIAOZHI_TTS_FORMAT='opus'.*pcm, wav, mp3"):
        OpenAICompatibleTTS("http://127.0.0.1:9/v1", response_format="opus")


# --- selection and readiness ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_both_are_in_the_catalogue_and_the_agent_form_asks_for_their_server(settings):
    from devices.forms import AgentConfigForm
    from devices.models import AgentConfig
    from voice.providers import registry

    assert "openai" in registry.names("asr") and "openai" in registry.names("tts")
    assert ("openai", "OpenAI-compatible") in AgentConfig._meta.get_field("tts_provider").choices
    settings.XIAOZHI_ASR_BASE_URL = settings.XIAOZHI_TTS_BASE_URL = ""
    form = AgentConfigForm(data={"name": "zh", "asr_provider": "openai", "tts_provider": "openai"})
    assert not form.is_valid()
    assert "XIAOZHI_ASR_BASE_URL" in form.errors["asr_provider"][0]
    assert "XIAOZHI_TTS_BASE_URL" in form.errors["tts_provider"][0]
    settings.XIAOZHI_ASR_BASE_URL = settings.XIAOZHI_TTS_BASE_URL = "http://127.0.0.1:9/v1"
    settings.XIAOZHI_TTS_FORMAT = "ogg"
    form = AgentConfigForm(data={"name": "zh", "asr_provider": "openai", "tts_provider": "openai"})
    assert not form.is_valid() and list(form.errors) == ["tts_provider"]
    assert "XIAOZHI_TTS_FORMAT='ogg'" in form.errors["tts_provider"][0]
    settings.XIAOZHI_TTS_FORMAT = "wav"
    assert AgentConfigForm(data={"name": "zh", "asr_provider": "openai", "tts_provider": "openai"}).is_valid()


def test_the_start_up_check_names_the_missing_servers(settings):
    from voice.checks import check_voice_settings

    settings.XIAOZHI_ASR_PROVIDER = settings.XIAOZHI_TTS_PROVIDER = "openai"
    settings.XIAOZHI_ASR_BASE_URL = settings.XIAOZHI_TTS_BASE_URL = ""
    errors = {e.id: e for e in check_voice_settings()}
    assert "XIAOZHI_ASR_BASE_URL" in errors["voice.E013"].msg
    assert "XIAOZHI_TTS_BASE_URL" in errors["voice.E014"].msg


def test_the_registry_builds_them_from_settings(settings, server):
    from voice.providers import registry

    settings.XIAOZHI_ASR_BASE_URL = settings.XIAOZHI_TTS_BASE_URL = server.url
    settings.XIAOZHI_ASR_LANGUAGE = "zh"
    settings.XIAOZHI_TTS_VOICE = "xiaoxiao"
    settings.XIAOZHI_TTS_RETRIES = 0
    registry.forget("asr", "openai")
    registry.forget("tts", "openai")
    try:
        server.transcript = CHINESE
        assert registry.get_asr("openai").transcribe(speech()) == CHINESE
        tts = registry.get_tts("openai")
        assert tts.endpoint.retries == 0
        assert spoken(tts).size == PCM_RATE
        assert server.of(TRANSCRIPTIONS)[0].fields["language"] == "zh"
        assert server.of(SPEECH)[0].fields["voice"] == "xiaoxiao"
    finally:
        registry.forget("asr", "openai")
        registry.forget("tts", "openai")
