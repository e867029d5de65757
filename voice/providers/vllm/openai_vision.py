"""Vision over any OpenAI-compatible chat server: hosted APIs, Ollama's vision models
(``http://host:11434/v1``), llama.cpp's ``llama-server`` started with a projector (``--mmproj``).

The photo travels inside the chat request as a data URI in an ``image_url`` content part, the one
image form all of these accept. The request goes through the same ``RemoteEndpoint`` as the LLM,
ASR and TTS servers (``voice.providers.remote``: retries before the server answers, ``Retry-After``,
timeouts, a circuit breaker of its own with ``vision_*`` counters), so a vision server that is down
fails fast in the same way. The answer is asked for whole (``stream: false``): it is handed back to
the device as one tool result, not spoken sentence by sentence.
"""
from __future__ import annotations

import base64
import json
import threading

from voice.providers.base import ProviderUnavailable
from voice.providers.errors import VisionError
from voice.providers.remote import RemoteEndpoint, RetryPolicy

IMAGE_TYPES = {"image/jpeg", "image/png"}
MAX_REPLY_BYTES = 256 * 1024  # a spoken answer is a few hundred bytes; more is a server gone wrong


class OpenAIVision:
    name = "openai"

    def __init__(self, base_url: str | None, api_key: str | None = None, model: str | None = None,
                 timeout: float = 20.0, max_tokens: int = 120, system_prompt: str = "",
                 policy: RetryPolicy = RetryPolicy()):
        if not base_url:
            raise ProviderUnavailable(
                "the openai vision provider needs a server: set XIAOZHI_VLLM_BASE_URL "
                "(e.g. http://localhost:11434/v1 for Ollama) and XIAOZHI_VLLM_MODEL")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        # The whole answer is waited for, so retries may use the whole timeout (a budget of None).
        self.endpoint = RemoteEndpoint("vision server", self.url, VisionError, stats="vision", timeout=timeout,
                                       api_key=api_key, policy=policy)
        self.breaker = self.endpoint.breaker

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
        body = {"messages": self.messages(question, image, mime), "stream": False, "max_tokens": self.max_tokens,
                "temperature": 0.2}
        if model or self.model:
            body["model"] = model or self.model
        response = self.endpoint.open(cancel, json=body)
        if response is None:
            return ""  # cancelled while waiting to retry
        with self.endpoint.reading(response):
            raw = bytearray()
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > MAX_REPLY_BYTES:
                    raise VisionError(f"{self.endpoint.label} sent a reply over {MAX_REPLY_BYTES} bytes")
            answer = _answer(bytes(raw), self.endpoint.label)
        return answer

    def close(self) -> None:
        self.endpoint.close()


def _answer(raw: bytes, label: str) -> str:
    """The assistant's text in a chat completion; a VisionError for anything else."""
    try:
        reply = json.loads(raw)
        content = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise VisionError(f"{label} sent an unexpected reply: {raw[:200]!r}") from None
    if isinstance(content, list):  # some servers answer in content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise VisionError(f"{label} gave an empty answer")
    return content.strip()
