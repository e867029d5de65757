"""Providers: the pool, the fakes, the HTTP LLM against a local fake server, the registry, and the
bundled models themselves (marked ``models``; each loaded once for this module)."""
import contextlib
import http.server
import json
import os
import re
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

from django.test import override_settings  # noqa: E402

from voice.audio.resample import int16_to_float32, resample  # noqa: E402
from voice.providers import base, registry  # noqa: E402
from voice.providers.errors import LLMError  # noqa: E402
from voice.providers.fake import FakeASR, FakeLLM, FakeTTS  # noqa: E402
from voice.providers.llm.openai_compat import OpenAICompatibleLLM  # noqa: E402
from voice.providers.pool import ModelPool, PoolTimeout  # noqa: E402

SAY_HELLO = [{"role": "system", "content": "You are a friendly voice assistant."}, {"role": "user", "content": "Say hello."}]


# --- pool -----------------------------------------------------------------------------------------


def test_pool_builds_every_instance_up_front_and_lends_them_back():
    built = []
    pool = ModelPool(lambda: built.append(object()) or built[-1], size=2)
    assert len(built) == 2 and pool.available == 2
    with pool.borrow() as first, pool.borrow() as second:
        assert {id(first), id(second)} == {id(b) for b in built}
        assert pool.available == 0
    assert pool.available == 2


def test_pool_borrow_times_out_when_every_instance_is_busy():
    pool = ModelPool(object, size=1, acquire_timeout=0.05)
    with pool.borrow():
        started = time.perf_counter()
        with pytest.raises(PoolTimeout) as caught, pool.borrow():
            pass
        assert time.perf_counter() - started < 1.0
    assert isinstance(caught.value, TimeoutError)
    with pool.borrow():
        pass  # freed again


def test_callers_taking_the_whole_pool_at_once_take_turns_instead_of_each_holding_part():
    """Several devices warming the router contexts at once (prefill_tools) each take every
    instance; interleaved, each held one of two and waited for the other until the timeout."""
    pool = ModelPool(object, size=2, acquire_timeout=5)
    start, done = threading.Barrier(4), []
    lend = pool.borrow

    @contextlib.contextmanager
    def slow_borrow(timeout=None):
        with lend(timeout) as instance:
            time.sleep(0.05)  # the other callers' turn to take one now
            yield instance

    pool.borrow = slow_borrow

    def warm_all():
        start.wait()
        with pool.borrow_all() as instances:
            time.sleep(0.01)
            done.append(len(instances))

    threads = [threading.Thread(target=warm_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert done == [2, 2, 2, 2] and pool.available == 2  # a PoolTimeout would have left a caller out


def test_retiring_a_pool_takes_the_idle_instances_and_leaves_a_busy_one_to_its_caller():
    """At exit the LLM frees its contexts; one still evaluating on a worker thread must not be
    freed under it (that crashed the process)."""
    pool = ModelPool(list, size=2)
    release = threading.Event()

    def busy():
        with pool.borrow() as instance:
            instance.append("in use")
            release.wait(10)

    worker = threading.Thread(target=busy)
    worker.start()
    while pool.available != 1:
        time.sleep(0.01)
    retired = pool.retire(timeout=0.2)
    release.set()
    worker.join(10)
    assert len(retired) == 1 and retired[0] == []  # the idle one; the busy one (["in use"]) was left
    assert pool.retire(timeout=0.2)[0] == ["in use"]  # returned after its call: retired now


def test_pool_returns_the_instance_when_the_borrower_fails():
    pool = ModelPool(object, size=1)
    with pytest.raises(RuntimeError), pool.borrow():
        raise RuntimeError("boom")
    assert pool.available == 1


# --- fakes ----------------------------------------------------------------------------------------


def test_fake_asr_hears_nothing_in_silence():
    asr = FakeASR(text="turn it on")
    assert asr.transcribe(np.zeros(16000, np.float32)) == ""
    assert asr.transcribe(np.full(16000, 0.1, np.float32)) == "turn it on"


def test_fake_llm_streams_word_by_word_and_honours_cancel():
    llm = FakeLLM(reply="one two three four")
    assert "".join(llm.stream([], threading.Event())) == "one two three four"
    cancel = threading.Event()
    deltas = []
    for delta in llm.stream([], cancel):
        deltas.append(delta)
        cancel.set()
    assert deltas == ["one"]


def test_fake_llm_cancel_cuts_a_scripted_delay_short():
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    started = time.perf_counter()
    assert list(FakeLLM(delay_first=5.0).stream([], cancel)) == []
    assert time.perf_counter() - started < 1.0


def test_fake_tts_audio_lasts_a_quarter_second_per_word():
    tts = FakeTTS(sample_rate=16000)
    (audio,) = list(tts.synthesize("one two three four"))
    assert audio.dtype == np.int16 and len(audio) == 16000
    assert list(tts.synthesize("   ")) == []


def test_fakes_satisfy_the_provider_protocols():
    assert isinstance(FakeASR(), base.ASRProvider)
    assert isinstance(FakeLLM(), base.LLMProvider)
    assert isinstance(FakeTTS(), base.TTSProvider)


# --- OpenAI-compatible LLM against a local fake server ------------------------------------------------


class FakeChatServer(http.server.BaseHTTPRequestHandler):
    """Streams SSE the way OpenAI-compatible servers do; the request's last message picks a behaviour."""

    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChatServer.requests.append((dict(self.headers), body))
        command = body["messages"][-1]["content"]
        if command == "fail":
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "model crashed"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if command == "garbage":
            self._send("data: {not json\n\n")
            return
        if command == "stall":
            time.sleep(1.0)
            return
        self._send(": keep-alive\n\n")
        self._send('data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n')
        words = ["Hello", " there", ",", " friend", "."] * (20 if command == "long" else 1)
        for word in words:
            self._send("data: " + json.dumps({"choices": [{"delta": {"content": word}}]}) + "\n\n")
            if command == "long":
                time.sleep(0.01)
        self._send("data: [DONE]\n\n")

    def _send(self, text):
        try:
            self.wfile.write(text.encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def chat_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeChatServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def ask(llm, text, cancel=None):
    return list(llm.stream([{"role": "user", "content": text}], cancel or threading.Event()))


def test_openai_compatible_llm_joins_streamed_deltas(chat_server):
    llm = OpenAICompatibleLLM(chat_server + "/", api_key="secret", model="tiny", max_tokens=32)
    assert "".join(ask(llm, "hi")) == "Hello there, friend."
    headers, body = FakeChatServer.requests[-1]
    assert headers["Authorization"] == "Bearer secret"
    assert body["model"] == "tiny" and body["stream"] is True and body["max_tokens"] == 32
    llm.close()


def test_openai_compatible_llm_reports_http_errors(chat_server):
    with pytest.raises(LLMError, match="HTTP 500"):
        ask(OpenAICompatibleLLM(chat_server), "fail")


def test_openai_compatible_llm_reports_malformed_chunks(chat_server):
    with pytest.raises(LLMError, match="malformed"):
        ask(OpenAICompatibleLLM(chat_server), "garbage")


def test_openai_compatible_llm_reports_timeouts(chat_server):
    with pytest.raises(LLMError, match="timed out"):
        ask(OpenAICompatibleLLM(chat_server, timeout=0.2), "stall")


def test_openai_compatible_llm_reports_an_unreachable_server():
    with pytest.raises(LLMError):
        ask(OpenAICompatibleLLM("http://127.0.0.1:9/v1", timeout=2), "hi")


def test_openai_compatible_llm_stops_on_cancel(chat_server):
    llm = OpenAICompatibleLLM(chat_server)
    cancel = threading.Event()
    deltas = []
    for delta in llm.stream([{"role": "user", "content": "long"}], cancel):
        deltas.append(delta)
        if len(deltas) == 3:
            cancel.set()
    assert len(deltas) == 3
    assert "".join(ask(llm, "hi")) == "Hello there, friend."  # the client is still usable


def test_openai_compatible_llm_needs_a_base_url():
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_LLM_BASE_URL"):
        OpenAICompatibleLLM(None)


# --- registry -------------------------------------------------------------------------------------


@pytest.fixture
def fresh_registry():
    registry.reset_for_tests()
    yield registry
    registry.reset_for_tests()


def test_registry_builds_each_provider_once(fresh_registry):
    with override_settings(XIAOZHI_ASR_PROVIDER="fake"):
        assert fresh_registry.get_asr() is fresh_registry.get_asr("fake")
    assert fresh_registry.get_llm("fake") is fresh_registry.get_llm("fake")
    assert fresh_registry.loaded_names() == {"vad": [], "asr": ["fake"], "llm": ["fake"], "tts": [], "vllm": [], "turn": []}


def test_registry_builds_once_under_concurrent_first_use(fresh_registry):
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(fresh_registry.get_tts("fake"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(p) for p in seen}) == 1


@pytest.mark.parametrize(
    "getter, name, setting",
    [
        ("get_asr", "funasr", "XIAOZHI_ASR_PROVIDER=whisper"),
        ("get_asr", "nonsense", "XIAOZHI_ASR_PROVIDER"),
        ("get_llm", "nonsense", "XIAOZHI_LLM_PROVIDER"),
        ("get_vad", "webrtc", "XIAOZHI_VAD_PROVIDER"),
    ],
)
def test_registry_names_the_setting_for_unknown_providers(fresh_registry, getter, name, setting):
    with pytest.raises(base.ProviderUnavailable, match=setting):
        getattr(fresh_registry, getter)(name)


def test_registry_openai_without_a_server_names_the_setting(fresh_registry):
    with override_settings(XIAOZHI_LLM_BASE_URL=""), pytest.raises(base.ProviderUnavailable, match="XIAOZHI_LLM_BASE_URL"):
        fresh_registry.get_llm("openai")
    assert fresh_registry.loaded_names()["llm"] == []


@pytest.mark.models
def test_preload_builds_and_warms_the_configured_providers(fresh_registry):
    with override_settings(XIAOZHI_ASR_PROVIDER="fake", XIAOZHI_LLM_PROVIDER="fake", XIAOZHI_TTS_PROVIDER="fake"):
        spent = fresh_registry.preload()
    assert set(spent) == {"vad", "asr", "llm", "tts", "turn"}
    assert fresh_registry.loaded_names() == {"vad": ["silero"], "asr": ["fake"], "llm": ["fake"], "tts": ["fake"],
                                             "vllm": [], "turn": ["smart_turn"]}


# --- the bundled models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper():
    from voice.providers.tts.piper import PiperTTS

    tts = PiperTTS(noise_scale=0.0, noise_w_scale=0.0)  # repeatable speech: no flaky transcripts
    tts.warm()
    return tts


@pytest.fixture(scope="module")
def speech(piper):
    """'Turn on the kitchen light' as a device would send it: 16 kHz float32, with quiet around it."""
    audio = np.concatenate(list(piper.synthesize("Turn on the kitchen light.")))
    pcm = int16_to_float32(resample(audio, piper.sample_rate, 16000))
    quiet = np.zeros(8000, np.float32)
    return np.concatenate([quiet, pcm, quiet])


@pytest.fixture(scope="module")
def silero():
    from voice.providers.vad.silero import SileroVAD

    return SileroVAD()


@pytest.fixture(scope="module")
def whisper():
    from voice.providers.asr.whisper import WhisperASR

    asr = WhisperASR(pool_size=1, threads=2)
    asr.warm()
    return asr


@pytest.fixture(scope="module")
def smollm2():
    from voice.providers.llm.smollm2 import SmolLM2LLM

    llm = SmolLM2LLM(pool_size=1, threads=2, max_tokens=40)
    llm.warm()
    return llm


@pytest.mark.models
def test_piper_yields_int16_speech_at_its_own_rate(piper):
    assert piper.sample_rate == 22050
    chunks = list(piper.synthesize("Hello there. How are you today?"))
    assert len(chunks) == 2  # one per sentence
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    assert np.abs(chunks[0]).max() > 10000
    assert list(piper.synthesize(" ... ")) == []
    assert piper._pool.available == 1


@pytest.mark.models
def test_silero_hears_speech_and_not_silence(silero, speech):
    stream = silero.new_stream()
    probs = []
    for start in range(0, len(speech), 960):  # 60 ms frames, as devices send them
        probs += stream.probabilities(speech[start : start + 960])
    assert len(probs) == len(speech) // 512
    assert max(probs) > 0.8
    noise = np.random.default_rng(0).normal(0, 0.003, 16000).astype(np.float32)
    quiet = silero.new_stream()
    assert max(quiet.probabilities(np.zeros(16000, np.float32)) + quiet.probabilities(noise)) < 0.2
    assert isinstance(silero, base.VADModel) and isinstance(stream, base.VADStream)


@pytest.mark.models
def test_silero_keeps_a_partial_chunk_for_the_next_call(silero):
    stream = silero.new_stream()
    assert stream.probabilities(np.zeros(500, np.float32)) == []
    assert len(stream.probabilities(np.zeros(600, np.float32))) == 2
    stream.reset()
    assert stream.probabilities(np.zeros(511, np.float32)) == []


@pytest.mark.models
def test_silero_batch_matches_one_stream_at_a_time(silero, speech):
    alone = silero.new_stream().probabilities(speech)
    talker, quiet, late = silero.new_stream(), silero.new_stream(), silero.new_stream()
    batched = [[], [], []]
    for start in range(0, len(speech), 960):
        frame = speech[start : start + 960]
        extra = frame[:300] if start % 1920 == 0 else frame  # uneven feeds across streams
        for i, got in enumerate(silero.probabilities_batch([talker, quiet, late], [frame, np.zeros(960, np.float32), extra])):
            batched[i] += got
    np.testing.assert_allclose(batched[0], alone, atol=1e-5)
    assert max(batched[1]) < 0.2
    assert len(batched[2]) < len(batched[0])


@pytest.mark.models
def test_whisper_transcribes_piper_speech(whisper, speech):
    assert whisper.window == "trimmed"  # the default
    text = whisper.transcribe(speech).lower()
    assert "kitchen" in text and "light" in text
    assert whisper.transcribe(np.zeros(16000, np.float32)) == ""
    assert whisper.transcribe(np.zeros(100, np.float32)) == ""


@pytest.mark.models
def test_whisper_windows_hear_the_same_words_and_the_trimmed_one_no_loop_or_noise(whisper, piper):
    """The trimmed window's known failures, on clips where they were seen: a one-word answer it
    repeated ("Yes. Yes. Yes"), a trailing restart ("Play some music. Play"), a last word dropped
    when the clip ends on it, and words made up for room noise. Whatever it returns must be what
    the full window hears."""
    from voice.providers.asr.whisper import WhisperASR

    full = WhisperASR(pool_size=1, threads=2, window="full")
    for text, tail in (("Yes.", 4800), ("Goodbye.", 4800), ("Play some music.", 4800),
                       ("What is the capital of France?", 4800),
                       ("My name is Ana and I love jazz.", 0)):  # released on "jazz": it was dropped
        audio = np.concatenate(list(piper.synthesize(text)))
        pcm = int16_to_float32(resample(audio, piper.sample_rate, 16000))
        clip = np.concatenate([np.zeros(4800, np.float32), pcm, np.zeros(tail, np.float32)])
        assert words(whisper.transcribe(clip)) == words(full.transcribe(clip)), text
    noise = np.random.default_rng(7).normal(0, 0.02, 32000).astype(np.float32)
    assert whisper.transcribe(noise) == ""


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def test_whisper_cuts_a_decode_at_its_first_repeat():
    from voice.providers.asr.whisper import looks_looped, without_repeats

    assert without_repeats("Yes. Yes. Yes. Yes") == "Yes."
    assert without_repeats("Play some music. Play") == "Play some music."
    assert without_repeats("Turn it down. Then play music.") == "Turn it down. Then play music."
    assert looks_looped("Goodbye Goodbye Goodbye Goodbye")
    assert looks_looped("I am I am I am")
    assert not looks_looped("What is the capital of France?")
    assert not looks_looped("No, no. I said the kitchen light.")


def test_a_whisper_window_that_does_not_exist_is_refused():
    from voice.providers.asr.whisper import WhisperASR

    with pytest.raises(ValueError, match="trimmed"):
        WhisperASR(window="half")


@pytest.mark.models
def test_smollm2_streams_a_reply(smollm2):
    deltas = list(smollm2.stream(SAY_HELLO, threading.Event()))
    assert "".join(deltas).strip()
    assert smollm2._pool.available == 1


@pytest.mark.models
def test_smollm2_stops_promptly_on_cancel(smollm2):
    cancel = threading.Event()
    after_cancel = 0
    for i, _delta in enumerate(smollm2.stream([*SAY_HELLO[:1], {"role": "user", "content": "Count from one to fifty."}], cancel)):
        if cancel.is_set():
            after_cancel += 1
        if i == 2:
            cancel.set()
    assert cancel.is_set() and after_cancel <= 1
    assert smollm2._pool.available == 1


@pytest.mark.models
def test_smollm2_returns_its_instance_when_the_reader_walks_away(smollm2):
    stream = smollm2.stream(SAY_HELLO, threading.Event())
    next(stream)
    assert smollm2._pool.available == 0
    stream.close()
    assert smollm2._pool.available == 1
