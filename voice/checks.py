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
    ("asr", "openai"): ("voice.E013", "Set XIAOZHI_ASR_BASE_URL (and XIAOZHI_ASR_MODEL), or another XIAOZHI_ASR_PROVIDER"),
    ("tts", "openai"): ("voice.E014", "Set XIAOZHI_TTS_BASE_URL and XIAOZHI_TTS_FORMAT to pcm, wav or mp3, or another XIAOZHI_TTS_PROVIDER"),
    ("vllm", "openai"): ("voice.E015", "Set XIAOZHI_VLLM_BASE_URL (and XIAOZHI_VLLM_MODEL), or XIAOZHI_VLLM_PROVIDER= for no vision"),
}


@register()
def check_voice_settings(app_configs=None, **kwargs):
    errors = []
    for kind in registry.KINDS:
        setting, name = registry.SETTING[kind], registry.resolve(kind)
        if not name and kind in registry.OPTIONAL_KINDS:
            continue  # none configured: the server runs without it
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
    errors += _check_extra_tools()
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


def auth_secret_problem() -> str | None:
    """Why the token-signing secret cannot be trusted, or None. Tokens are HMACs under it: with the
    repository's default key anyone can sign a valid token for any device."""
    secret = settings.XIAOZHI_AUTH_SECRET or ""
    if secret == getattr(settings, "DEFAULT_SECRET_KEY", None):
        return "it is the public default SECRET_KEY from xiaozhi/settings.py"
    if secret.startswith(("django-insecure-", "dev-only")):
        return "it is marked insecure"
    if len(secret) < 32 or len(set(secret)) < 5:
        return "it is shorter than 32 characters or too repetitive"
    return None


@register()
def check_device_security(app_configs=None, **kwargs):
    errors = []
    if settings.XIAOZHI_AUTH_ENABLED:
        problem = auth_secret_problem()
        if problem:
            errors.append(Error(
                f"XIAOZHI_AUTH_ENABLED is on but device tokens would be signed with a key anyone can use: {problem}",
                hint="Set SECRET_KEY (or XIAOZHI_AUTH_SECRET) to a long random value, e.g. "
                     "python -c 'import secrets; print(secrets.token_urlsafe(50))'", id="voice.E020"))
    if "*" in settings.ALLOWED_HOSTS and not settings.XIAOZHI_WEBSOCKET_URL:
        errors.append(Error(
            "ALLOWED_HOSTS accepts any Host while XIAOZHI_WEBSOCKET_URL is empty: the OTA answer would send "
            "devices to whatever server a forged Host header names",
            hint="Set XIAOZHI_WEBSOCKET_URL (e.g. wss://voice.example.com/xiaozhi/v1/) or list the server's "
                 "names in ALLOWED_HOSTS", id="voice.E021"))
    url = settings.XIAOZHI_WEBSOCKET_URL
    if url and not (url.startswith(("ws://", "wss://")) and len(url) > len("wss://")):
        errors.append(Error(f"XIAOZHI_WEBSOCKET_URL={url!r} is not a ws:// or wss:// URL",
                            hint="e.g. wss://voice.example.com/xiaozhi/v1/", id="voice.E022"))
    if settings.XIAOZHI_HTTPS and not settings.XIAOZHI_TRUSTED_PROXIES:
        errors.append(Warning(
            "XIAOZHI_HTTPS is on but no proxy is trusted to say a request came over HTTPS: unless Daphne "
            "serves TLS itself, every admin request is redirected to HTTPS again", hint="List the TLS proxy's "
            "address in XIAOZHI_TRUSTED_PROXIES (it must set X-Forwarded-Proto and X-Forwarded-For)", id="voice.W023"))
    return errors


def refuse_insecure_start() -> None:
    """Daphne does not run system checks: the server process calls this so it will not serve with
    the security errors above (``manage.py check`` reports them with their hints)."""
    from django.core.exceptions import ImproperlyConfigured

    errors = check_device_security()
    if errors:
        raise ImproperlyConfigured("; ".join(f"{e.id}: {e.msg} (hint: {e.hint})" for e in errors))


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
