"""What each provider needs before it can start, checked cheaply (settings, files, importable
packages; no model load, no network), so a wrong choice is refused where it is made (the admin's
agent form) with the setting to fix, instead of failing on a device's next turn."""
from __future__ import annotations

from collections.abc import Callable

from django.conf import settings


def _openai() -> str | None:
    if not settings.XIAOZHI_LLM_BASE_URL:
        return "the openai LLM provider needs a server: set XIAOZHI_LLM_BASE_URL (and XIAOZHI_LLM_MODEL)"
    return None


def _openai_asr() -> str | None:
    if not settings.XIAOZHI_ASR_BASE_URL:
        return "the openai ASR provider needs a server: set XIAOZHI_ASR_BASE_URL (and XIAOZHI_ASR_MODEL)"
    return None


def _openai_tts() -> str | None:
    from voice.providers.tts import openai_tts

    if not settings.XIAOZHI_TTS_BASE_URL:
        return "the openai TTS provider needs a server: set XIAOZHI_TTS_BASE_URL (and XIAOZHI_TTS_MODEL, XIAOZHI_TTS_VOICE)"
    return openai_tts.format_problem(settings.XIAOZHI_TTS_FORMAT)


def _funasr() -> str | None:
    from voice.providers.asr import sensevoice

    return sensevoice.model_dir_problem(settings.XIAOZHI_SENSEVOICE_MODEL_DIR) or sensevoice.package_problem()


def _edge() -> str | None:
    from voice.providers.tts import edge

    return edge.package_problem() or edge.voice_problem(settings.XIAOZHI_EDGE_TTS_VOICE)


def _openai_vision() -> str | None:
    if not settings.XIAOZHI_VLLM_BASE_URL:
        return "the openai vision provider needs a server: set XIAOZHI_VLLM_BASE_URL (and XIAOZHI_VLLM_MODEL)"
    return None


# Providers missing here need nothing beyond the packages in requirements.txt.
def _smart_turn() -> str | None:
    from voice.providers.base import ProviderUnavailable
    from voice.providers.turn.smart_turn import bundled_model_path

    try:
        bundled_model_path()
    except ProviderUnavailable as exc:
        return str(exc)
    return None


CHECKS: dict[tuple[str, str], Callable[[], str | None]] = {
    ("turn", "smart_turn"): _smart_turn,
    ("asr", "funasr"): _funasr,
    ("asr", "openai"): _openai_asr,
    ("llm", "openai"): _openai,
    ("tts", "edge"): _edge,
    ("tts", "openai"): _openai_tts,
    ("vllm", "openai"): _openai_vision,
}


def problem(kind: str, name: str) -> str | None:
    """Why provider ``name`` of ``kind`` cannot start on this server, naming the setting; None if
    it can (as far as can be known without starting it)."""
    check = CHECKS.get((kind, name))
    return check() if check else None
