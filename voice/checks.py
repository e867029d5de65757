"""Start-up checks: settings and performance.yaml are validated before the server serves anything."""
from django.conf import settings
from django.core.checks import Error, Warning, register

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
