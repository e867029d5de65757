"""Any OpenAI-compatible chat server: hosted APIs, Ollama (``http://host:11434/v1``), llama.cpp's
``llama-server``, vLLM. Streams server-sent events and yields the text deltas.

Requests go through a ``RemoteEndpoint`` (``voice.providers.remote``): one connection pool, retries
with backoff and a circuit breaker, the same as the OpenAI-compatible ASR and TTS. Retries happen
only *before the first token*: once text has been yielded it is on its way to the device, sentence
by sentence; a retry would generate a different reply and the device would speak the start of one
answer glued to another, so a failure after the first token ends the turn instead. Retries stop at
the retry budget (the service's first-token timeout), since the turn gives up on its side then anyway.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence

from voice.providers.base import ProviderUnavailable
from voice.providers.errors import LLMError
from voice.providers.remote import RemoteEndpoint, RetryPolicy

DONE = "[DONE]"


class OpenAICompatibleLLM:
    name = "openai"

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
        max_tokens: int = 80,
        temperature: float = 0.3,
        retries: int = 2,
        backoff: float = 0.25,
        retry_budget: float | None = None,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
    ):
        """``retries``: extra attempts before the first token; ``backoff``: the first retry's
        delay in seconds, doubled each time; ``retry_budget``: seconds from the start of a request
        within which a retry may still start (default ``timeout``)."""
        if not base_url:
            raise ProviderUnavailable(
                "the openai LLM provider needs a server: set XIAOZHI_LLM_BASE_URL "
                "(e.g. http://localhost:11434/v1 for Ollama) and XIAOZHI_LLM_MODEL"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.endpoint = RemoteEndpoint(
            "LLM server", self.url, LLMError, stats="llm", timeout=timeout, api_key=api_key,
            policy=RetryPolicy(retries, backoff, retry_budget, breaker_failures, breaker_cooldown),
            headers={"Accept": "text/event-stream"},
        )
        self.breaker = self.endpoint.breaker

    def stream(self, messages: Sequence[dict], cancel: threading.Event, model: str | None = None) -> Iterator[str]:
        """``model``: this request's model (an agent's ``llm_model``), else the provider's own."""
        if cancel.is_set():
            return
        model = model or self.model
        body = {
            "messages": list(messages),
            "stream": True,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if model:
            body["model"] = model
        response = self.endpoint.open(cancel, json=body)
        if response is None:
            return  # cancelled while waiting to retry
        # From here on the breaker's outcome for this request is decided by how the stream ends.
        with self.endpoint.reading(response):
            for line in response.iter_lines():
                if cancel.is_set():
                    return  # the server was answering; the turn moved on
                delta = _delta(line)
                if delta is DONE:
                    break
                if delta:
                    yield delta

    def close(self) -> None:
        self.endpoint.close()


def _delta(line: str) -> str | None:
    """Text carried by one SSE line; ``DONE`` at the end of the stream; None for anything else
    (blank lines, comments, event names, role-only chunks)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == DONE:
        return DONE
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise LLMError(f"LLM server sent a malformed chunk: {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise LLMError(f"LLM server sent an unexpected chunk: {data[:200]!r}")
    if chunk.get("error"):
        raise LLMError(f"LLM server reported an error: {chunk['error']}")
    try:
        choices = chunk.get("choices") or []
        return (choices[0].get("delta") or {}).get("content") if choices else None
    except (AttributeError, IndexError, TypeError):
        raise LLMError(f"LLM server sent an unexpected chunk: {data[:200]!r}") from None
