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


def _funasr() -> str | None:
    from voice.providers.asr import sensevoice

    return sensevoice.model_dir_problem(settings.XIAOZHI_SENSEVOICE_MODEL_DIR) or sensevoice.package_problem()


def _edge() -> str | None:
    from voice.providers.tts import edge

    return edge.package_problem() or edge.voice_problem(settings.XIAOZHI_EDGE_TTS_VOICE)


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
    ("llm", "openai"): _openai,
    ("tts", "edge"): _edge,
}


def problem(kind: str, name: str) -> str | None:
    """Why provider ``name`` of ``kind`` cannot start on this server, naming the setting; None if
    it can (as far as can be known without starting it)."""
    check = CHECKS.get((kind, name))
    return check() if check else None
