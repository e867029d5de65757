"""Providers by name, each built once per process and shared by every session.

Settings are read when a provider is first built, never at import, so importing this module is
cheap and tests can change settings before anything loads. Heavy packages are imported only by
the provider that needs them.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings

from voice.providers.base import ASRProvider, LLMProvider, ProviderUnavailable, TTSProvider, VADModel

logger = logging.getLogger(__name__)

KINDS = ("vad", "asr", "llm", "tts", "vllm", "turn")  # turn: end-of-turn detection, beside the VAD
SETTING = {kind: f"XIAOZHI_{kind.upper()}_PROVIDER" for kind in KINDS}
# Kinds a server may run without: a blank XIAOZHI_<KIND>_PROVIDER means none (vision: no device is
# offered the camera's upload URL), and an agent may choose NONE to go without while the server has one.
OPTIONAL_KINDS = ("vllm",)
NONE = "none"

_lock = threading.RLock()
_providers: dict[tuple[str, str], object] = {}


def _pool_size(kind: str) -> int:
    from voice.conf import service_limits

    return service_limits(kind).pool_size


def _silero():
    from voice.providers.vad.silero import SileroVAD

    return SileroVAD()


def _whisper():
    from voice.providers.asr.whisper import WhisperASR

    return WhisperASR(pool_size=_pool_size("asr"), threads=settings.XIAOZHI_MODEL_THREADS,
                      window=settings.XIAOZHI_WHISPER_WINDOW)


def _funasr():
    from voice.providers.asr.sensevoice import SenseVoiceASR

    return SenseVoiceASR(
        settings.XIAOZHI_SENSEVOICE_MODEL_DIR,
        pool_size=_pool_size("asr"),
        threads=settings.XIAOZHI_MODEL_THREADS,
        language=settings.XIAOZHI_SENSEVOICE_LANGUAGE,
    )


def _smollm2():
    from voice.providers.llm.smollm2 import SmolLM2LLM

    return SmolLM2LLM(
        pool_size=_pool_size("llm"),
        threads=settings.XIAOZHI_MODEL_THREADS,
        max_tokens=settings.XIAOZHI_LLM_MAX_TOKENS,
        system_prompt=settings.XIAOZHI_SYSTEM_PROMPT,
    )


def _retry_policy(kind: str, settings_kind: str | None = None):
    """Retries and breaker of an OpenAI-compatible provider of ``kind``, from the settings of
    ``settings_kind`` (default ``kind``); a retry may start until the turn's wait for the call's
    first result (first token, first audio) ends."""
    from voice.conf import service_limits
    from voice.providers.remote import RetryPolicy

    limits, prefix = service_limits(kind), f"XIAOZHI_{(settings_kind or kind).upper()}_"
    return RetryPolicy(
        retries=getattr(settings, prefix + "RETRIES"),
        backoff=getattr(settings, prefix + "RETRY_BACKOFF_SECONDS"),
        budget=limits.first_token_timeout or limits.timeout,
        breaker_failures=getattr(settings, prefix + "BREAKER_FAILURES"),
        breaker_cooldown=getattr(settings, prefix + "BREAKER_COOLDOWN_SECONDS"),
    )


def _openai():
    from voice.conf import service_limits
    from voice.providers.llm.openai_compat import OpenAICompatibleLLM

    return OpenAICompatibleLLM(
        settings.XIAOZHI_LLM_BASE_URL,
        api_key=settings.XIAOZHI_LLM_API_KEY,
        model=settings.XIAOZHI_LLM_MODEL,
        timeout=service_limits("llm").timeout,
        max_tokens=settings.XIAOZHI_LLM_MAX_TOKENS,
        policy=_retry_policy("llm"),
    )


def _openai_asr():
    from voice.conf import service_limits
    from voice.providers.asr.openai_asr import OpenAICompatibleASR

    return OpenAICompatibleASR(
        settings.XIAOZHI_ASR_BASE_URL,
        api_key=settings.XIAOZHI_ASR_API_KEY,
        model=settings.XIAOZHI_ASR_MODEL,
        language=settings.XIAOZHI_ASR_LANGUAGE,
        timeout=service_limits("asr").timeout,
        policy=_retry_policy("asr"),
    )


def _openai_tts():
    from voice.conf import service_limits
    from voice.providers.tts.openai_tts import OpenAICompatibleTTS

    limits = service_limits("tts")
    return OpenAICompatibleTTS(
        settings.XIAOZHI_TTS_BASE_URL,
        api_key=settings.XIAOZHI_TTS_API_KEY,
        model=settings.XIAOZHI_TTS_MODEL,
        voice=settings.XIAOZHI_TTS_VOICE,
        response_format=settings.XIAOZHI_TTS_FORMAT,
        sample_rate=settings.XIAOZHI_TTS_SAMPLE_RATE,
        # Each wait between two pieces of audio; the turn's stall timeout is shorter when set.
        timeout=limits.timeout,
        policy=_retry_policy("tts"),
    )


def _openai_vision():
    from voice.conf import service_limits
    from voice.providers.vllm.openai_vision import OpenAIVision

    return OpenAIVision(
        settings.XIAOZHI_VLLM_BASE_URL,
        api_key=settings.XIAOZHI_VLLM_API_KEY,
        model=settings.XIAOZHI_VLLM_MODEL,
        timeout=service_limits("vllm").timeout,
        max_tokens=settings.XIAOZHI_VLLM_MAX_TOKENS,
        system_prompt=settings.XIAOZHI_VLLM_PROMPT,
        # the LLM's retry settings; the whole answer is waited for (vllm has no first-token wait)
        policy=_retry_policy("vllm", settings_kind="llm"),
    )


def _piper():
    from voice.providers.tts.piper import PiperTTS

    return PiperTTS(pool_size=_pool_size("tts"), threads=settings.XIAOZHI_MODEL_THREADS)


def _edge():
    from voice.conf import service_limits
    from voice.providers.tts.edge import EdgeTTS

    return EdgeTTS(
        default_voice=settings.XIAOZHI_EDGE_TTS_VOICE,
        url=settings.XIAOZHI_EDGE_TTS_URL or None,
        timeout=service_limits("tts").timeout,
    )


def _smart_turn():
    from voice.providers.turn.smart_turn import SmartTurn

    return SmartTurn()


def _silence_only():
    from voice.providers.turn.smart_turn import SilenceOnly

    return SilenceOnly()


def _fake(kind: str) -> Callable[[], object]:
    def build():
        from voice.providers import fake

        return {"asr": fake.FakeASR, "llm": fake.FakeLLM, "tts": fake.FakeTTS}[kind]()

    return build


BUILDERS: dict[str, dict[str, Callable[[], object]]] = {
    "vad": {"silero": _silero},
    "asr": {"whisper": _whisper, "funasr": _funasr, "openai": _openai_asr, "fake": _fake("asr")},
    "llm": {"smollm2": _smollm2, "openai": _openai, "fake": _fake("llm")},
    "tts": {"piper": _piper, "edge": _edge, "openai": _openai_tts, "fake": _fake("tts")},
    "vllm": {"openai": _openai_vision},
    "turn": {"smart_turn": _smart_turn, "silence": _silence_only},
}
# Display names (the admin's agent form); a provider without one is shown by its name.
LABELS = {
    "silero": "Silero VAD (bundled)",
    "whisper": "Whisper (bundled)",
    "funasr": "FunASR SenseVoice",
    "smollm2": "SmolLM2 (bundled)",
    "openai": "OpenAI-compatible",
    "piper": "Piper (bundled)",
    "edge": "Edge TTS (online)",
    "fake": "Fake (tests)",
    "smart_turn": "Smart Turn v3 (bundled)",
    "silence": "Silence only",
}


def names(kind: str) -> list[str]:
    """The providers of ``kind`` this server can build, in the catalogue's order."""
    return list(BUILDERS[kind])


def label(name: str) -> str:
    return LABELS.get(name, name)


def resolve(kind: str, name: str | None = None) -> str:
    """The provider to use: ``name`` when one is chosen (an agent's field), else the server's
    ``XIAOZHI_<KIND>_PROVIDER``. The one place where "blank means the server default" is decided.
    For an optional kind, "" means none (the agent chose ``NONE``, or the server has none)."""
    if name == NONE and kind in OPTIONAL_KINDS:
        return ""
    return name or getattr(settings, SETTING[kind])


def _get(kind: str, name: str | None):
    name = resolve(kind, name)
    key = (kind, name)
    provider = _providers.get(key)
    if provider is not None:
        return provider
    with _lock:  # one build per provider even when many sessions ask at once
        provider = _providers.get(key)
        if provider is None:
            builder = BUILDERS[kind].get(name)
            if builder is None and not name and kind in OPTIONAL_KINDS:
                raise ProviderUnavailable(f"no {kind.upper()} provider is configured: set {SETTING[kind]} "
                                          f"to one of: {', '.join(sorted(BUILDERS[kind]))}")
            if builder is None:
                raise ProviderUnavailable(_unknown_message(kind, name))
            provider = builder()
            _providers[key] = provider
        return provider


def _unknown_message(kind: str, name: str) -> str:
    return f"unknown {kind.upper()} provider {name!r}; set {SETTING[kind]} to one of: {', '.join(sorted(BUILDERS[kind]))}"


def get_vad(name: str | None = None) -> VADModel:
    return _get("vad", name)


def get_asr(name: str | None = None) -> ASRProvider:
    return _get("asr", name)


def get_llm(name: str | None = None) -> LLMProvider:
    return _get("llm", name)


def get_tts(name: str | None = None) -> TTSProvider:
    return _get("tts", name)


def get_vllm(name: str | None = None):
    """The vision provider (``voice.providers.vllm``): ``describe(question, image, mime, model=None) -> str``."""
    return _get("vllm", name)


def get_turn(name: str | None = None):
    """The end-of-turn model (``probability(pcm) -> float | None``), shared like the VAD."""
    return _get("turn", name)


def preload(kinds=KINDS) -> dict[str, float]:
    """Build and warm the configured providers (of ``kinds``) so the first device is served at full
    speed. Returns seconds spent per kind; raises ProviderUnavailable naming the setting to change.
    An optional kind the server has no provider for is skipped."""
    spent = {}
    for kind in kinds:
        if kind in OPTIONAL_KINDS and not resolve(kind):
            continue
        started = time.perf_counter()
        provider = _get(kind, None)
        warm = getattr(provider, "warm", None)
        if warm is not None:
            warm()
        if kind == "llm":
            _prepare_stock_tools(provider)
        spent[kind] = time.perf_counter() - started
        logger.info("%s provider %r ready in %.2f s", kind.upper(), provider.name, spent[kind])
    return spent


def _prepare_stock_tools(llm) -> None:
    """The bundled model decides on tools from a few-shot prefix built from the session's tool list,
    evaluated once per list (seconds, cold). Most devices run the stock firmware, so that list is
    evaluated now: otherwise the first devices after a start waited for it (five talkers at once
    heard their first answers 3.3-4.2 s late, against ~1.5 s once warm)."""
    prefill = getattr(llm, "prefill_tools", None)
    if prefill is None or not settings.XIAOZHI_TOOLS_ENABLED:
        return
    from voice.pipeline.tool_loop import stock_toolset

    prefill(stock_toolset().specs())


def loaded_names() -> dict[str, list[str]]:
    return {kind: sorted(name for k, name in list(_providers) if k == kind) for kind in KINDS}


def reset_for_tests() -> None:
    with _lock:
        for provider in _providers.values():
            close = getattr(provider, "close", None)
            if close is not None:
                close()
        _providers.clear()


def forget(kind: str, name: str) -> None:
    """Drop one built provider (closing it), so the next use builds it from current settings."""
    with _lock:
        provider = _providers.pop((kind, name), None)
    close = getattr(provider, "close", None)
    if close is not None:
        close()
