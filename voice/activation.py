"""What an unbound device hears instead of an answer: its activation code, spoken.

When activation is required, a device that is not bound to an account gets no ASR or LLM: at each
``listen start`` and each utterance it is told the code to enter in the admin console, at most
every ``every`` seconds unless the prompt is forced (an utterance always gets one).
"""
from __future__ import annotations

import logging
import time

from voice.pipeline.turn import TurnDeps, speak

log = logging.getLogger(__name__)

ACTIVATION_PROMPT_EVERY = 30.0


class ActivationPrompt:
    def __init__(self, code: str | None, every: float = ACTIVATION_PROMPT_EVERY):
        self.code = code or ""
        self.every = every
        self._last = 0.0

    @property
    def text(self) -> str:
        digits = " ".join(self.code)
        return f"This device is not activated yet. Please enter the code {digits} in the admin console."

    def due(self, force: bool = False) -> bool:
        return force or time.monotonic() - self._last >= self.every

    async def say(self, deps: TurnDeps, force: bool = False) -> None:
        """Speak the prompt as a complete reply, if due. A failure is logged and the reply closed
        (``tts stop``), never raised: the device must not hang in ``speaking``."""
        if not self.due(force):
            return
        self._last = time.monotonic()
        try:
            await speak(deps, self.text)
        except Exception as exc:  # noqa: BLE001
            log.warning("activation prompt failed: %s", exc)
            await deps.pacer.interrupt()
