"""Start-up checks: settings and performance.yaml are validated before the server serves anything."""
from django.conf import settings
from django.core.checks import Error, Warning, register

from voice.conf import PerformanceConfigError, performance_config
from voice.providers import registry, requirements

# What to change when the configured provider cannot start (found by voice/providers/requirements.py,
# the same checks the admin's agent form runs): the check's id and its hint.
READINESS_IDS = {
    ("llm", "openai"): ("voice.E003", "Set XIAOZHI_LLM_BASE_URL (and XIAOZHI_LLM_MODEL)"),
    ("asr", "funasr"): ("voice.E006", "Set XIAOZHI_SENSEVOICE_MODEL_DIR to a SenseVoiceSmall folder, or another XIAOZHI_ASR_PROVIDER"),
    ("tts", "edge"): ("voice.E007", "Set XIAOZHI_EDGE_TTS_VOICE to a voice such as en-US-AriaNeural, or another XIAOZHI_TTS_PROVIDER"),
}


@register()
def check_voice_settings(app_configs=None, **kwargs):
    errors = []
    for kind in registry.KINDS:
        setting, name = registry.SETTING[kind], registry.resolve(kind)
        if name not in registry.names(kind):
            errors.append(Error(f"{setting}={name!r} is not a known provider",
                                hint=f"Use one of: {', '.join(sorted(registry.names(kind)))}", id="voice.E001"))
    if settings.XIAOZHI_OUTPUT_SAMPLE_RATE not in (16000, 24000):
        errors.append(Error("XIAOZHI_OUTPUT_SAMPLE_RATE must be 16000 or 24000", id="voice.E002"))
    errors += _check_readiness()
    from voice.providers.asr import sensevoice

    problem = sensevoice.language_problem(settings.XIAOZHI_SENSEVOICE_LANGUAGE)
    if problem:
        errors.append(Error(problem, hint="Set XIAOZHI_SENSEVOICE_LANGUAGE to auto, zh, en, yue, ja or ko", id="voice.E005"))
    try:
        performance_config.cache_clear()  # re-read: the check is also how a changed override is validated
        performance_config()
    except PerformanceConfigError as exc:
        errors.append(Error(f"performance configuration: {exc}",
                            hint="Fix the key in the source named (performance.yaml, data/.performance.yaml, "
                                 "an XIAOZHI_PERF__* variable or XIAOZHI_PERFORMANCE_PROFILE)", id="voice.E004"))
    return errors


def _check_readiness():
    """The server's own providers, by the cheap checks of ``requirements`` (settings, files,
    packages; no model load, no network): a wrong path or a missing package fails at start rather
    than after a slow import or at the first utterance. A remote service is not contacted: its
    failure during a turn is spoken around like any provider error."""
    errors = []
    for kind in registry.KINDS:
        name = registry.resolve(kind)
        problem = requirements.problem(kind, name)
        if problem:
            check_id, hint = READINESS_IDS.get((kind, name), ("voice.E008", f"Fix what is named, or set another {registry.SETTING[kind]}"))
            errors.append(Error(problem, hint=hint, id=check_id))
    return errors


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


@register()
def check_memory_method(app_configs=None, **kwargs):
    """Per-device memory summarised by the bundled SmolLM2 is noise (benchmarks/README.md, "Memory"):
    say so when the setting asks for it."""
    from voice import memory

    llm = registry.resolve("llm")
    if settings.XIAOZHI_MEMORY_ENABLED and llm in memory.EXTRACTING_LLMS and settings.XIAOZHI_MEMORY_METHOD == "llm":
        return [Warning(f"XIAOZHI_MEMORY_METHOD=llm with XIAOZHI_LLM_PROVIDER={llm}: this model's memory summaries "
                        "lose the user's name and add invented facts",
                        hint="Leave XIAOZHI_MEMORY_METHOD at auto (extraction for this model)", id="voice.W101")]
    return []
