"""Any OpenAI-compatible chat server: hosted APIs, Ollama (``http://host:11434/v1``), llama.cpp's
``llama-server``, vLLM. Streams server-sent events and yields the text deltas; offered tools, it
sends them as native ``tools`` and assembles the streamed ``tool_calls`` into ``ToolCall`` items.

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
from voice.tools.model import ToolCall

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
        policy: RetryPolicy = RetryPolicy(),
    ):
        """``policy``: retries happen before the first token, so its budget should be what the turn
        waits for that token (the registry passes it); None there means ``timeout``."""
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
            policy=policy,
            headers={"Accept": "text/event-stream"},
        )
        self.breaker = self.endpoint.breaker

    def stream(self, messages: Sequence[dict], cancel: threading.Event,
               tools: Sequence[dict] | None = None, model: str | None = None) -> Iterator[str | ToolCall]:
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
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = "auto"
        calls = _ToolCallAssembler()
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
                if delta is None:
                    continue
                calls.feed(delta.get("tool_calls"))
                content = delta.get("content")
                if content and isinstance(content, str):
                    yield content
            yield from calls.finish()

    def close(self) -> None:
        self.endpoint.close()


class _ToolCallAssembler:
    """Streamed ``tool_calls`` deltas put together: each call arrives in fragments keyed by
    ``index`` (its id and name first, then pieces of the JSON arguments string)."""

    MAX_CALLS = 8  # a server asking for more in one reply is cut here

    def __init__(self):
        self._parts: dict[int, dict] = {}

    def feed(self, fragments) -> None:
        if not isinstance(fragments, list):
            return
        for fragment in fragments:
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", len(self._parts))
            if not isinstance(index, int) or (index not in self._parts and len(self._parts) >= self.MAX_CALLS):
                continue
            part = self._parts.setdefault(index, {"id": "", "name": "", "arguments": []})
            if fragment.get("id"):
                part["id"] = str(fragment["id"])
            function = fragment.get("function") or {}
            if isinstance(function, dict):
                if function.get("name"):
                    part["name"] += str(function["name"])
                if isinstance(function.get("arguments"), str):
                    part["arguments"].append(function["arguments"])
                elif isinstance(function.get("arguments"), dict):  # some servers send an object at once
                    part["arguments"].append(json.dumps(function["arguments"]))

    def finish(self) -> Iterator[ToolCall]:
        for index in sorted(self._parts):
            part = self._parts[index]
            raw = "".join(part["arguments"]).strip() or "{}"
            problem = ""
            try:
                arguments = json.loads(raw)
            except json.JSONDecodeError:
                arguments, problem = {}, f"the arguments were not valid JSON: {raw[:200]}"
            if not isinstance(arguments, dict):
                arguments, problem = {}, f"the arguments were not a JSON object: {raw[:200]}"
            yield ToolCall(part["id"] or f"call_{index}", part["name"], arguments, problem)


def _delta(line: str) -> dict | str | None:
    """The ``delta`` object carried by one SSE line (text in ``content``, fragments of tool calls
    in ``tool_calls``); ``DONE`` at the end of the stream; None for anything else (blank lines,
    comments, event names, chunks without choices)."""
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
        if not choices:
            return None
        delta = choices[0].get("delta") or {}
        if not isinstance(delta, dict):
            raise TypeError
        return delta
    except (AttributeError, IndexError, TypeError):
        raise LLMError(f"LLM server sent an unexpected chunk: {data[:200]!r}") from None
