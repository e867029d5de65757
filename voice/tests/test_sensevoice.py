"""The funasr SenseVoice ASR provider, loaded for real (funasr's AutoModel reading a local folder) from
a tiny SenseVoiceSmall made here (see ``tiny_sensevoice.py``): the real weights cannot be fetched, so
its transcripts are gibberish, and what is asserted is the path around them: loading, settings,
tags stripped, sample rates, no network, clear errors, and a whole spoken turn."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

from django.test import override_settings  # noqa: E402

from voice.audio.resample import int16_to_float32, resample  # noqa: E402
from voice.checks import check_voice_settings  # noqa: E402
from voice.conf import performance_limits  # noqa: E402
from voice.providers import base, registry  # noqa: E402
from voice.providers.asr import sensevoice  # noqa: E402
from voice.providers.asr.sensevoice import SenseVoiceASR, strip_tags  # noqa: E402
from voice.tests import tiny_sensevoice  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Built once per test run: the first build pays funasr's import (~10 s)."""
    return str(tiny_sensevoice.build(tmp_path_factory.mktemp("sensevoice") / "SenseVoiceSmall"))


@pytest.fixture(scope="session")
def speech():
    """'Turn on the kitchen light' spoken by the bundled Piper voice, as 16 kHz float32 PCM."""
    tts = registry.get_tts("piper")
    audio = np.concatenate(list(tts.synthesize("Turn on the kitchen light.")))
    return int16_to_float32(resample(audio, tts.sample_rate, 16000))


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Refuses (and records) every name lookup and every connection except to loopback, so a
    stray hub download or update check fails the test even where the library swallows errors."""
    attempts = []

    def refuse(what):
        attempts.append(what)
        raise NetworkAttempt(f"network use during the test: {what}")

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1", None):
            refuse(f"lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost") or host.startswith("/")):
            refuse(f"connection to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert attempts == [], f"the provider touched the network: {attempts}"


@pytest.fixture
def torch_threads():
    """funasr sets torch's thread count for the whole process: put it back for the other tests."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def funasr_from_settings(settings, tiny_model_dir, tmp_path):
    """The server configured for funasr on the tiny model, pool size 2 and one thread per model,
    through the real settings and performance.yaml override paths."""
    override = tmp_path / ".performance.yaml"
    override.write_text("services:\n  asr:\n    pool_size: 2\n")
    settings.XIAOZHI_PERFORMANCE_OVERRIDES = str(override)
    settings.XIAOZHI_ASR_PROVIDER = "funasr"
    settings.XIAOZHI_SENSEVOICE_MODEL_DIR = tiny_model_dir
    settings.XIAOZHI_MODEL_THREADS = 1
    performance_limits.cache_clear()
    registry.forget("asr", "funasr")
    yield settings
    registry.forget("asr", "funasr")
    performance_limits.cache_clear()


# --- tags -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, text",
    [
        ("<|en|><|NEUTRAL|><|Speech|><|woitn|>turn on the light", "turn on the light"),
        ("<|zh|><|HAPPY|><|Speech|><|withitn|>打开厨房的灯。", "打开厨房的灯。"),
        ("<|en|><|EMO_UNKNOWN|><|BGM|><|woitn|>", ""),
        ("hello <|en|> there", "hello there"),
        ("a < b and c|>d", "a < b and c|>d"),  # not a tag: kept as said
    ],
)
def test_tags_are_stripped_and_words_kept(raw, text):
    assert strip_tags(raw) == text


# --- failures name the setting ---------------------------------------------------------------------------


def test_an_unset_folder_names_the_setting():
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_SENSEVOICE_MODEL_DIR") as caught:
        SenseVoiceASR(None)
    assert "XIAOZHI_ASR_PROVIDER" in str(caught.value) and "model.pt" in str(caught.value)


def test_a_missing_folder_names_the_setting_and_the_path(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_SENSEVOICE_MODEL_DIR") as caught:
        SenseVoiceASR(missing)
    assert missing in str(caught.value)


def test_a_folder_without_model_pt_is_refused_rather_than_run_on_random_weights(tiny_model_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / "model.pt").unlink()
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_SENSEVOICE_MODEL_DIR") as caught:
        SenseVoiceASR(str(partial))
    assert "lacks model.pt" in str(caught.value)


def test_a_folder_without_the_bpe_model_is_refused(tiny_model_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / sensevoice.BPE_MODEL).unlink()
    with pytest.raises(base.ProviderUnavailable, match=sensevoice.BPE_MODEL.replace(".", r"\.")):
        SenseVoiceASR(str(partial))


def test_an_unreadable_model_pt_names_the_setting(tiny_model_dir, tmp_path, torch_threads):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_SENSEVOICE_MODEL_DIR") as caught:
        SenseVoiceASR(str(broken))
    assert "could not be loaded" in str(caught.value)


def test_weights_of_another_model_are_refused_rather_than_left_random(tiny_model_dir, tmp_path, torch_threads):
    other = tiny_sensevoice.build(tmp_path / "narrower", encoder={"output_size": 16})
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_model_dir, mixed)
    shutil.copy(other / "model.pt", mixed / "model.pt")
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_SENSEVOICE_MODEL_DIR") as caught:
        SenseVoiceASR(str(mixed), threads=1)
    assert "model.pt does not match config.yaml" in str(caught.value)


def test_a_missing_package_names_the_provider_setting(tiny_model_dir, monkeypatch):
    # Stand-in for an environment without funasr (it cannot be uninstalled under the other tests).
    monkeypatch.setattr(sensevoice, "_installed", lambda module: module != "funasr")
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_ASR_PROVIDER=whisper") as caught:
        SenseVoiceASR(tiny_model_dir)
    assert "funasr" in str(caught.value)


def test_an_unknown_language_names_its_setting(tiny_model_dir):
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_SENSEVOICE_LANGUAGE"):
        SenseVoiceASR(tiny_model_dir, language="fr")


def test_the_registry_names_the_setting_when_funasr_has_no_folder(settings):
    settings.XIAOZHI_SENSEVOICE_MODEL_DIR = ""
    registry.forget("asr", "funasr")
    with pytest.raises(base.ProviderUnavailable, match="XIAOZHI_SENSEVOICE_MODEL_DIR"):
        registry.get_asr("funasr")
    assert "funasr" not in registry.loaded_names()["asr"]


# --- start-up checks ----------------------------------------------------------------------------------------


def test_the_check_reports_a_missing_folder_when_funasr_is_the_server_asr(settings, tmp_path):
    settings.XIAOZHI_ASR_PROVIDER = "funasr"
    settings.XIAOZHI_SENSEVOICE_MODEL_DIR = str(tmp_path / "nowhere")
    errors = check_voice_settings()
    assert [e.id for e in errors] == ["voice.E006"]
    assert "XIAOZHI_SENSEVOICE_MODEL_DIR" in errors[0].msg


def test_the_check_passes_with_a_complete_folder(settings, tiny_model_dir):
    settings.XIAOZHI_ASR_PROVIDER = "funasr"
    settings.XIAOZHI_SENSEVOICE_MODEL_DIR = tiny_model_dir
    assert check_voice_settings() == []


def test_the_check_ignores_the_folder_when_another_asr_is_selected(settings):
    settings.XIAOZHI_ASR_PROVIDER = "whisper"
    settings.XIAOZHI_SENSEVOICE_MODEL_DIR = ""
    assert check_voice_settings() == []


def test_the_check_names_a_bad_language(settings):
    settings.XIAOZHI_SENSEVOICE_LANGUAGE = "klingon"
    errors = check_voice_settings()
    assert [e.id for e in errors] == ["voice.E005"] and "XIAOZHI_SENSEVOICE_LANGUAGE" in errors[0].msg


# --- the real loading path ---------------------------------------------------------------------------------


@pytest.mark.models
def test_funasr_loads_from_the_folder_and_transcribes_speech_offline(funasr_from_settings, speech, no_network, torch_threads):
    import torch
    from funasr import AutoModel

    with override_settings(XIAOZHI_LLM_PROVIDER="fake", XIAOZHI_TTS_PROVIDER="fake"):
        registry.preload()  # builds and warms the configured ASR: the tiny SenseVoice
    asr = registry.get_asr()
    assert isinstance(asr, SenseVoiceASR) and isinstance(asr, base.ASRProvider)
    assert asr.name == "funasr" and asr.model_dir == funasr_from_settings.XIAOZHI_SENSEVOICE_MODEL_DIR
    # performance.yaml's services.asr.pool_size and XIAOZHI_MODEL_THREADS reached the models
    assert asr._pool.size == 2 and len({id(m) for m in asr._pool.instances}) == 2
    assert all(isinstance(m, AutoModel) and m.kwargs["ncpu"] == 1 for m in asr._pool.instances)
    assert torch.get_num_threads() == 1
    assert all(m.kwargs["init_param"].endswith("model.pt") for m in asr._pool.instances)

    text = asr.transcribe(speech)
    assert isinstance(text, str) and text and "<|" not in text
    with asr._pool.borrow() as model:
        raw = asr._raw_text(model, speech.copy())
    assert "<|" in raw, "the tiny model is built to emit SenseVoice's tags; stripping must see some"
    assert text == strip_tags(raw)
    # the interface's other inputs: int16 PCM, read-only buffers, and too little audio
    as_int16 = (speech * 32767).astype(np.int16)
    assert asr.transcribe(as_int16) == asr.transcribe(int16_to_float32(as_int16))
    frozen = np.frombuffer(speech.tobytes(), dtype=np.float32)
    assert asr.transcribe(frozen) == text
    assert asr.transcribe(np.zeros(100, np.float32)) == ""
    assert asr._pool.available == 2


@pytest.mark.models
def test_audio_is_resampled_to_the_rate_the_model_folder_declares(tmp_path, speech, no_network, torch_threads):
    folder = tiny_sensevoice.build(tmp_path / "sensevoice-8k", fs=8000)
    asr = SenseVoiceASR(str(folder), threads=1, language="zh")
    assert asr.model_rate == 8000
    with asr._pool.borrow() as model:
        expected = strip_tags(asr._raw_text(model, resample(speech, 16000, 8000)))
    assert asr.transcribe(speech) == expected
    assert asr._pool.instances[0].kwargs["language"] == "zh"  # the language hint reached the model's call


@pytest.mark.models
def test_loading_funasr_leaves_warnings_and_logging_as_they_were(tiny_model_dir):
    """funasr's import adds a blanket "ignore every warning" filter and may configure the root
    logger; in a fresh process (where the import really happens) the provider must undo both."""
    script = (
        "import logging, warnings, sys\n"
        "from voice.providers.asr.sensevoice import SenseVoiceASR\n"
        "filters, handlers = list(warnings.filters), list(logging.getLogger().handlers)\n"
        "SenseVoiceASR(sys.argv[1], threads=1)\n"
        "assert 'funasr' in sys.modules\n"
        "assert list(warnings.filters) == filters, [f for f in warnings.filters if f not in filters]\n"
        "assert logging.getLogger().handlers == handlers, logging.getLogger().handlers\n"
        "print('contained')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, tiny_model_dir], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "contained" in done.stdout, done.stderr[-2000:]


# --- a whole spoken turn --------------------------------------------------------------------------------


@pytest.mark.models
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    os.environ.get("XIAOZHI_WORKER_BACKEND") == "celery",
    reason="ASR then runs in the Celery worker started at session start, whose settings this test cannot point at the tiny model",
)
async def test_a_spoken_turn_with_funasr_completes(funasr_from_settings, connect_device, say, torch_threads):
    from devices.models import Turn

    funasr_from_settings.XIAOZHI_LLM_PROVIDER = "fake"
    funasr_from_settings.XIAOZHI_TTS_PROVIDER = "fake"
    device = await connect_device()
    result = await device.turn(say("Turn on the kitchen light."), mode="auto")
    # The tiny model hears gibberish, but the turn runs through: stt, an answer, and tts stop.
    assert result.stt and "<|" not in result.stt
    assert result.audio and result.stopped
    await device.close()
    turn = await Turn.objects.aget()
    assert turn.user_text == result.stt and not turn.error
    assert "funasr" in registry.loaded_names()["asr"]
