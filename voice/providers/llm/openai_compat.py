"""Any OpenAI-compatible chat server: hosted APIs, Ollama (``http://host:11434/v1``), llama.cpp's
``llama-server``, vLLM. Streams server-sent events and yields the text deltas.

One ``httpx.Client`` per provider object, shared by every session: it is thread-safe and keeps
connections alive, which saves a TCP/TLS handshake on every turn.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence

import httpx

from voice.providers.base import ProviderUnavailable
from voice.providers.errors import LLMError

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
    ):
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
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # The read timeout bounds each wait between two chunks, so a stalled stream fails too.
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    def stream(self, messages: Sequence[dict], cancel: threading.Event) -> Iterator[str]:
        if cancel.is_set():
            return
        body = {
            "messages": list(messages),
            "stream": True,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.model:
            body["model"] = self.model
        try:
            with self._client.stream("POST", self.url, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise LLMError(f"LLM server {self.url} answered HTTP {response.status_code}: {response.text[:300]}")
                for line in response.iter_lines():
                    if cancel.is_set():
                        return  # leaving the block closes the response mid-stream
                    delta = _delta(line)
                    if delta is DONE:
                        return
                    if delta:
                        yield delta
        except httpx.TimeoutException as exc:
            raise LLMError(f"LLM server {self.url} timed out ({self.timeout:g} s): {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise LLMError(f"LLM server {self.url} failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._client.close()


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
