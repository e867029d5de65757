"""Bad configuration fails at start-up with a message that names what to change."""
import pytest

from voice.checks import check_voice_settings
from voice.conf import PerformanceConfigError, deep_merge, parse_limits, performance_limits

BASE = {"services": {name: {"max_concurrent": 1, "queue_size": 4, "timeout": 5, "pool_size": 1}
                     for name in ("vad", "asr", "llm", "tts", "vllm")}}


def ids(errors):
    return {e.id for e in errors}


def test_the_shipped_configuration_passes(settings):
    assert check_voice_settings() == []


def test_an_unknown_provider_is_named(settings):
    settings.XIAOZHI_ASR_PROVIDER = "wisper"
    errors = check_voice_settings()
    assert "voice.E001" in ids(errors) and "XIAOZHI_ASR_PROVIDER" in errors[0].msg


def test_the_openai_provider_without_a_server_is_refused(settings):
    settings.XIAOZHI_LLM_PROVIDER = "openai"
    settings.XIAOZHI_LLM_BASE_URL = ""
    assert "voice.E003" in ids(check_voice_settings())


def test_a_missing_sensevoice_folder_and_a_malformed_edge_voice_are_refused_as_the_agent_form_refuses_them(settings, tmp_path):
    from voice.providers import requirements

    settings.XIAOZHI_ASR_PROVIDER = "funasr"
    settings.XIAOZHI_SENSEVOICE_MODEL_DIR = str(tmp_path / "nowhere")
    settings.XIAOZHI_TTS_PROVIDER = "edge"
    settings.XIAOZHI_EDGE_TTS_VOICE = "not a voice"
    errors = {e.id: e.msg for e in check_voice_settings()}
    assert errors["voice.E006"] == requirements.problem("asr", "funasr") and "nowhere" in errors["voice.E006"]
    assert errors["voice.E007"] == requirements.problem("tts", "edge") and "not a voice" in errors["voice.E007"]


def test_a_blank_choice_resolves_to_the_servers_provider(settings):
    from voice.providers import registry

    settings.XIAOZHI_LLM_PROVIDER = "fake"
    assert registry.resolve("llm", "") == registry.resolve("llm", None) == "fake"
    assert registry.resolve("llm", "openai") == "openai"
    assert registry.names("tts") == ["piper", "edge", "openai", "fake"]


def test_a_bad_override_file_names_the_key(settings, tmp_path):
    override = tmp_path / ".performance.yaml"
    override.write_text("services:\n  asr:\n    max_concurrent: zero\n")
    settings.XIAOZHI_PERFORMANCE_OVERRIDES = str(override)
    errors = check_voice_settings()
    assert "voice.E004" in ids(errors) and "services.asr.max_concurrent" in errors[0].msg
    performance_limits.cache_clear()


def test_overrides_are_deep_merged():
    merged = deep_merge(BASE, {"services": {"asr": {"max_concurrent": 3}}})
    limits = parse_limits(merged)
    assert limits["asr"].max_concurrent == 3 and limits["asr"].queue_size == 4 and limits["llm"].max_concurrent == 1


@pytest.mark.parametrize("key,value", [("queue_size", -1), ("timeout", 0), ("pool_size", 1.5)])
def test_out_of_range_values_are_refused(key, value):
    bad = deep_merge(BASE, {"services": {"tts": {key: value}}})
    with pytest.raises(PerformanceConfigError, match=f"services.tts.{key}"):
        parse_limits(bad)
