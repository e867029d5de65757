"""Any OpenAI-compatible chat server: hosted APIs, Ollama (``http://host:11434/v1``), llama.cpp's
``llama-server``, vLLM. Streams server-sent events and yields the text deltas; offered tools, it
sends them as native ``tools`` and assembles the streamed ``tool_calls`` into ``ToolCall`` items.

One ``httpx.Client`` per provider object, shared by every session: it is thread-safe and keeps
connections alive, which saves a TCP/TLS handshake on every turn.

Failures of the server are retried with exponential backoff (honouring ``Retry-After``) only
*before the first token*: a connection that fails, HTTP 429 and 5xx. Once text has been yielded it
is on its way to the device, sentence by sentence; a retry would generate a different reply and
the device would speak the start of one answer glued to another, so a failure after the first
token ends the turn instead. Retries stop at the retry budget (the service's first-token timeout),
since the turn gives up on its side then anyway. A circuit breaker per provider object
(``voice.providers.breaker``) makes requests fail at once while the server is known to be down.
"""
from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Iterator, Sequence

import httpx

from voice import live_stats
from voice.providers.base import ProviderUnavailable
from voice.providers.breaker import CircuitBreaker
from voice.providers.errors import CircuitOpen, LLMError
from voice.tools.model import ToolCall

DONE = "[DONE]"
MAX_ERROR_BODY = 300  # characters of an error reply quoted in the message


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
        self.retries = max(0, retries)
        self.backoff = max(0.0, backoff)
        self.retry_budget = timeout if retry_budget is None else retry_budget
        self.breaker = CircuitBreaker(f"LLM server {self.url}", breaker_failures, breaker_cooldown)
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # The read timeout bounds each wait between two chunks, so a stalled stream fails too.
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    def stream(self, messages: Sequence[dict], cancel: threading.Event,
               tools: Sequence[dict] | None = None) -> Iterator[str | ToolCall]:
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
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = "auto"
        calls = _ToolCallAssembler()
        response = self._open(body, cancel)
        if response is None:
            return  # cancelled while waiting to retry
        # From here on the breaker's outcome for this request is decided by how the stream ends.
        outcome = None
        try:
            for line in response.iter_lines():
                if cancel.is_set():
                    outcome = "success"  # the server was answering; the turn moved on
                    return
                delta = _delta(line)
                if delta is DONE:
                    break
                if delta is None:
                    continue
                calls.feed(delta.get("tool_calls"))
                content = delta.get("content")
                if content and isinstance(content, str):
                    yield content
            outcome = "success"
            yield from calls.finish()
        except httpx.TimeoutException as exc:
            outcome = "failure"
            raise LLMError(f"LLM server {self.url} timed out ({self.timeout:g} s): {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            outcome = "failure"
            raise LLMError(f"LLM server {self.url} failed: {type(exc).__name__}: {exc}") from exc
        except LLMError:
            outcome = "failure"
            raise
        finally:
            response.close()
            if outcome == "success":
                self.breaker.record_success()
            elif outcome == "failure":
                self.breaker.record_failure()
            else:  # the reader walked away (turn aborted): says nothing about the server
                self.breaker.record_abandoned()

    def _open(self, body: dict, cancel: threading.Event) -> httpx.Response | None:
        """Send the request until the server answers 2xx, retrying what may pass; the response is
        returned unread (streaming). None if ``cancel`` was set while waiting to retry."""
        started = time.monotonic()
        last_error: LLMError | None = None
        for attempt in range(self.retries + 1):
            try:
                self.breaker.before_request()
            except CircuitOpen as exc:
                raise exc from last_error
            retry_after = None
            try:
                response = self._client.send(self._client.build_request("POST", self.url, json=body), stream=True)
            except httpx.TimeoutException as exc:
                self.breaker.record_failure()
                last_error = LLMError(f"LLM server {self.url} timed out ({self.timeout:g} s): {type(exc).__name__}")
                # A read timeout already spent a whole timeout waiting: no time left to retry.
                retryable = isinstance(exc, httpx.ConnectTimeout)
            except httpx.TransportError as exc:
                self.breaker.record_failure()
                last_error = LLMError(f"LLM server {self.url} failed: {type(exc).__name__}: {exc}")
                retryable = True
            else:
                if response.status_code < 400:
                    return response
                text = _error_text(response)
                last_error = LLMError(f"LLM server {self.url} answered HTTP {response.status_code}: {text}")
                if response.status_code == 429 or response.status_code >= 500:
                    self.breaker.record_failure()
                    retryable = True
                    retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                else:
                    self.breaker.record_success()  # the server is up; this request is what is wrong
                    raise last_error
            if not retryable or attempt == self.retries:
                raise last_error
            delay = self.backoff * (2**attempt) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, retry_after)
            remaining = self.retry_budget - (time.monotonic() - started)
            if delay >= remaining:
                raise LLMError(
                    f"{last_error}; not retried: a retry in {delay:.1f} s would pass the "
                    f"{self.retry_budget:g} s retry budget"
                )
            live_stats.incr("llm_retries")
            if cancel.wait(delay):
                return None
        raise AssertionError("unreachable")  # the loop either returns or raises

    def close(self) -> None:
        self._client.close()


def _error_text(response: httpx.Response) -> str:
    try:
        response.read()
        return response.text[:MAX_ERROR_BODY]
    except httpx.HTTPError as exc:
        return f"(body unreadable: {type(exc).__name__})"
    finally:
        response.close()


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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
