"""Bad configuration fails at start-up with a message that names what to change."""
import pytest

from voice.checks import check_voice_settings
from voice.conf import PerformanceConfigError, deep_merge, parse_limits, performance_limits

BASE = {"services": {name: {"max_concurrent": 1, "queue_size": 4, "timeout": 5, "pool_size": 1}
                     for name in ("vad", "asr", "llm", "tts")}}


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
