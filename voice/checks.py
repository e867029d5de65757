"""Start-up checks: settings and performance.yaml are validated before the server serves anything."""
from django.conf import settings
from django.core.checks import Error, register

from voice.conf import PerformanceConfigError, performance_limits

KNOWN_PROVIDERS = {
    "XIAOZHI_VAD_PROVIDER": {"silero"},
    "XIAOZHI_ASR_PROVIDER": {"whisper", "funasr", "fake"},
    "XIAOZHI_LLM_PROVIDER": {"smollm2", "openai", "fake"},
    "XIAOZHI_TTS_PROVIDER": {"piper", "edge", "fake"},
}


@register()
def check_voice_settings(app_configs=None, **kwargs):
    errors = []
    for setting, names in KNOWN_PROVIDERS.items():
        value = getattr(settings, setting)
        if value not in names:
            errors.append(
                Error(f"{setting}={value!r} is not a known provider", hint=f"Use one of: {', '.join(sorted(names))}", id="voice.E001")
            )
    if settings.XIAOZHI_OUTPUT_SAMPLE_RATE not in (16000, 24000):
        errors.append(Error("XIAOZHI_OUTPUT_SAMPLE_RATE must be 16000 or 24000", id="voice.E002"))
    if settings.XIAOZHI_LLM_PROVIDER == "openai" and not settings.XIAOZHI_LLM_BASE_URL:
        errors.append(
            Error("the openai LLM provider needs a server", hint="Set XIAOZHI_LLM_BASE_URL (and XIAOZHI_LLM_MODEL)", id="voice.E003")
        )
    try:
        performance_limits.cache_clear()
        performance_limits()
    except PerformanceConfigError as exc:
        errors.append(Error(f"performance configuration: {exc}", hint="Fix performance.yaml or data/.performance.yaml", id="voice.E004"))
    return errors
