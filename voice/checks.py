"""Start-up checks: settings and performance.yaml are validated before the server serves anything."""
from django.conf import settings
from django.core.checks import Error, register

from voice.conf import PerformanceConfigError, performance_config

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
    errors += _check_edge()
    errors += _check_sensevoice()
    errors += _check_extra_tools()
    try:
        performance_config.cache_clear()  # re-read: the check is also how a changed override is validated
        performance_config()
    except PerformanceConfigError as exc:
        errors.append(Error(f"performance configuration: {exc}",
                            hint="Fix the key in the source named (performance.yaml, data/.performance.yaml, "
                                 "an XIAOZHI_PERF__* variable or XIAOZHI_PERFORMANCE_PROFILE)", id="voice.E004"))
    return errors


def _check_sensevoice():
    """The funasr ASR's folder and packages, when it is the server's ASR: cheap file checks, so a
    wrong path fails at start rather than after funasr's slow import or at the first utterance."""
    from voice.providers.asr import sensevoice

    errors = []
    problem = sensevoice.language_problem(settings.XIAOZHI_SENSEVOICE_LANGUAGE)
    if problem:
        errors.append(Error(problem, hint="Set XIAOZHI_SENSEVOICE_LANGUAGE to auto, zh, en, yue, ja or ko", id="voice.E005"))
    if settings.XIAOZHI_ASR_PROVIDER == "funasr":
        problem = sensevoice.model_dir_problem(settings.XIAOZHI_SENSEVOICE_MODEL_DIR) or sensevoice.package_problem()
        if problem:
            errors.append(
                Error(problem, hint="Set XIAOZHI_SENSEVOICE_MODEL_DIR to a SenseVoiceSmall folder, or another XIAOZHI_ASR_PROVIDER", id="voice.E006")
            )
    return errors


def _check_extra_tools():
    """A deployment's XIAOZHI_EXTRA_TOOLS are imported at start, so a typo fails here and not at
    the first turn that offers tools."""
    from voice.tools.server import ExtraToolError, load_extra_tools

    try:
        load_extra_tools(settings.XIAOZHI_EXTRA_TOOLS)
    except ExtraToolError as exc:
        return [Error(str(exc), hint="Name importable modules with a TOOLS list of voice.tools.model.ServerTool, "
                                     "or ServerTool objects (README, Tools)", id="voice.E030")]
    return []


def _check_edge():
    """Edge TTS, when it is the server's TTS: its packages and the default voice's form. The
    service itself is not contacted (no network at start-up); a failure during a turn is spoken
    around like any provider error."""
    if settings.XIAOZHI_TTS_PROVIDER != "edge":
        return []
    from voice.providers.tts import edge

    problem = edge.package_problem() or edge.voice_problem(settings.XIAOZHI_EDGE_TTS_VOICE)
    hint = "Set XIAOZHI_EDGE_TTS_VOICE to a voice such as en-US-AriaNeural, or another XIAOZHI_TTS_PROVIDER"
    return [Error(problem, hint=hint, id="voice.E007")] if problem else []


@register()
def check_worker_backend(app_configs=None, **kwargs):
    """Celery workers need a real broker and a channel layer shared with them (replies travel on it)."""
    backend = getattr(settings, "XIAOZHI_WORKER_BACKEND", "local")
    if backend == "local":
        return []
    if backend != "celery":
        return [Error(f"XIAOZHI_WORKER_BACKEND={backend!r} is not a worker backend", hint="Use local or celery", id="voice.E010")]
    errors = []
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        errors.append(Error(
            f"XIAOZHI_WORKER_BACKEND=celery needs a Redis broker, CELERY_BROKER_URL is {settings.CELERY_BROKER_URL!r}",
            hint="Set REDIS_URL (or CELERY_BROKER_URL=redis://...)", id="voice.E011"))
    layer = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if "Redis" not in layer:
        errors.append(Error(
            f"XIAOZHI_WORKER_BACKEND=celery needs the Redis channel layer (CHANNEL_LAYERS is {layer.rsplit('.', 1)[-1]})",
            hint="Set REDIS_URL: workers send results over the channel layer", id="voice.E012"))
    return errors
