"""One HTTP endpoint of a remote service (an OpenAI-compatible LLM, ASR or TTS server): its
connection pool, its retries and its circuit breaker, shared by every provider that talks HTTP so
they all fail the same way.

A request is retried with exponential backoff (honouring ``Retry-After``) when the connection fails,
or the server answers 429 or 5xx; a 4xx is the request's fault, is not retried and does not count
against the server. Retries happen only until the server answers 2xx: what comes after (a streamed
reply already on its way to the device) is the provider's business, since a second attempt would
produce a different reply. A retry never starts past the retry budget (the seconds the turn waits
for the call's first result), since the turn gives up on its side then anyway. The breaker
(``voice.providers.breaker``) makes requests fail at once while the server is known to be down.

One ``httpx.Client`` per endpoint, shared by every session: it is thread-safe and keeps connections
alive, which saves a TCP/TLS handshake on every turn.
"""
from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from voice import live_stats
from voice.providers.breaker import CircuitBreaker
from voice.providers.errors import CircuitOpen, ProviderError

MAX_ERROR_BODY = 300  # characters of an error reply quoted in the message


@dataclass(frozen=True)
class RetryPolicy:
    """``retries``: extra attempts before the server answers 2xx; ``backoff``: the first retry's
    delay in seconds, doubled each time; ``budget``: seconds from the start of a request within
    which a retry may still start (None: the endpoint's timeout); the breaker opens after
    ``breaker_failures`` failed requests in a row, for ``breaker_cooldown`` seconds."""

    retries: int = 2
    backoff: float = 0.25
    budget: float | None = None
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0


class RemoteEndpoint:
    def __init__(
        self,
        what: str,
        url: str,
        error: type[ProviderError],
        *,
        stats: str,
        timeout: float,
        policy: RetryPolicy = RetryPolicy(),
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        """``what``: how messages name the service ("LLM server"); ``error``: the exception its
        failures raise; ``stats``: the prefix of its live-stats counters (``<stats>_retries``,
        ``<stats>_breaker_opened``, ``<stats>_breaker_rejected``); ``timeout``: seconds to connect
        (at most 10) and at most between two pieces of a reply, so a stalled stream fails too."""
        self.url = url
        self.label = f"{what} {url}"
        self.error = error
        self.stats = stats
        self.timeout = timeout
        self.retries = max(0, policy.retries)
        self.backoff = max(0.0, policy.backoff)
        self.retry_budget = timeout if policy.budget is None else policy.budget
        self.breaker = CircuitBreaker(self.label, policy.breaker_failures, policy.breaker_cooldown, stats=stats)
        headers = dict(headers or {})
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    def open(self, cancel: threading.Event | None = None, **request) -> httpx.Response | None:
        """POST ``request`` (httpx's ``json=``, ``files=``, ``data=``) until the server answers
        2xx, retrying what may pass; the response is returned unread (streaming): read it inside
        ``reading``. None if ``cancel`` was set while waiting to retry."""
        started = time.monotonic()
        last_error: ProviderError | None = None
        for attempt in range(self.retries + 1):
            try:
                self.breaker.before_request()
            except CircuitOpen as exc:
                raise exc from last_error
            retry_after = None
            try:
                response = self._client.send(self._client.build_request("POST", self.url, **request), stream=True)
            except httpx.TimeoutException as exc:
                self.breaker.record_failure()
                last_error = self._timed_out(exc)
                # A read timeout already spent a whole timeout waiting: no time left to retry.
                retryable = isinstance(exc, httpx.ConnectTimeout)
            except httpx.TransportError as exc:
                self.breaker.record_failure()
                last_error = self.error(f"{self.label} failed: {type(exc).__name__}: {exc}")
                retryable = True
            else:
                if response.status_code < 400:
                    return response
                text = _error_text(response)
                last_error = self.error(f"{self.label} answered HTTP {response.status_code}: {text}")
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
                raise self.error(
                    f"{last_error}; not retried: a retry in {delay:.1f} s would pass the "
                    f"{self.retry_budget:g} s retry budget"
                )
            live_stats.incr(f"{self.stats}_retries")
            if (cancel or threading.Event()).wait(delay):
                return None
        raise AssertionError("unreachable")  # the loop either returns or raises

    @contextmanager
    def reading(self, response: httpx.Response) -> Iterator[httpx.Response]:
        """Read a 2xx ``response`` inside this block: a timeout or broken connection becomes the
        endpoint's error, and the breaker learns how the request ended (a reader that walks away,
        an aborted turn, says nothing about the server). The response is closed at the end."""
        outcome = None
        try:
            yield response
            outcome = "success"
        except httpx.TimeoutException as exc:
            outcome = "failure"
            raise self._timed_out(exc) from exc
        except httpx.HTTPError as exc:
            outcome = "failure"
            raise self.error(f"{self.label} failed: {type(exc).__name__}: {exc}") from exc
        except ProviderError:
            outcome = "failure"  # the server answered something we cannot use
            raise
        finally:
            response.close()
            if outcome == "success":
                self.breaker.record_success()
            elif outcome == "failure":
                self.breaker.record_failure()
            else:
                self.breaker.record_abandoned()

    def _timed_out(self, exc: Exception) -> ProviderError:
        return self.error(f"{self.label} timed out ({self.timeout:g} s): {type(exc).__name__}")

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
