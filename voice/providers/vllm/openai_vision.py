"""Vision over any OpenAI-compatible chat server: hosted APIs, Ollama's vision models
(``http://host:11434/v1``), llama.cpp's ``llama-server`` started with a projector (``--mmproj``).

The photo travels inside the chat request as a data URI in an ``image_url`` content part, the one
image form all of these accept. The request itself is the LLM provider's: the same streamed reply,
retries before the first token, ``Retry-After``, timeouts and circuit breaker
(``voice.providers.llm.openai_compat``), so a vision server that is down fails fast in the same way.
The answer is collected whole: it is handed back to the device as one tool result, not spoken
sentence by sentence.
"""
from __future__ import annotations

import base64
import threading

from voice.providers.base import ProviderUnavailable
from voice.providers.errors import LLMError
from voice.providers.llm.openai_compat import OpenAICompatibleLLM

IMAGE_TYPES = {"image/jpeg", "image/png"}


class OpenAIVision:
    name = "openai"

    def __init__(self, base_url: str | None, api_key: str | None = None, model: str | None = None,
                 timeout: float = 20.0, max_tokens: int = 120, system_prompt: str = "", retries: int = 2,
                 backoff: float = 0.25, breaker_failures: int = 5, breaker_cooldown: float = 30.0):
        if not base_url:
            raise ProviderUnavailable(
                "the openai vision provider needs a server: set XIAOZHI_VLLM_BASE_URL "
                "(e.g. http://localhost:11434/v1 for Ollama) and XIAOZHI_VLLM_MODEL")
        self.system_prompt = system_prompt
        # The whole answer is waited for, so retries may use the whole timeout.
        self._chat = OpenAICompatibleLLM(base_url, api_key=api_key, model=model, timeout=timeout,
                                         max_tokens=max_tokens, retries=retries, backoff=backoff,
                                         retry_budget=timeout, breaker_failures=breaker_failures,
                                         breaker_cooldown=breaker_cooldown)
        self._chat.breaker.name = f"vision server {self._chat.url}"
        self.url = self._chat.url

    @property
    def breaker(self):
        return self._chat.breaker

    def messages(self, question: str, image: bytes, mime: str) -> list[dict]:
        if mime not in IMAGE_TYPES:
            raise ValueError(f"unsupported image type {mime!r}")
        uri = f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": uri}},
        ]})
        return messages

    def describe(self, question: str, image: bytes, mime: str = "image/jpeg", model: str | None = None,
                 cancel: threading.Event | None = None) -> str:
        """The model's answer to ``question`` about ``image``; blocking (a worker thread)."""
        cancel = cancel or threading.Event()
        parts = self._chat.stream(self.messages(question, image, mime), cancel, model=model or None)
        answer = "".join(parts).strip()
        if not answer and not cancel.is_set():
            raise LLMError(f"vision server {self.url} gave an empty answer")
        return answer

    def close(self) -> None:
        self._chat.close()
