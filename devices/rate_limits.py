"""Rate limits per client address and per device, from performance.yaml's ``rate_limits``.

A fixed-window counter in Django's cache: with REDIS_URL the cache is Redis (INCR is atomic and
every process counts together), otherwise the in-process local-memory cache. The window is the
same clock slice in every process (``now // seconds``), so ``Retry-After`` is the time left in it.
A cache that fails lets the request through: an unreachable Redis must not lock every device out
(that outage is reported by /health, not by refusing service).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.http import JsonResponse

from devices.client_address import is_in
from voice.conf import performance_config

log = logging.getLogger(__name__)
KEY_PREFIX = "ratelimit:"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: str = ""  # the name of the limit that refused
    retry_after: int = 0  # seconds until the refusing window ends


ALLOWED = Verdict(True)


def exempt(address: str) -> bool:
    """Per-address limits apply to known, non-exempt addresses (a Unix-socket peer has none)."""
    return not address or is_in(address, settings.XIAOZHI_RATE_LIMIT_EXEMPT)


def _window(name: str, key: str, now: float):
    limit = performance_config().rate_limits[name]
    index = int(now // limit.seconds)
    retry_after = max(1, math.ceil((index + 1) * limit.seconds - now))
    return limit, f"{KEY_PREFIX}{name}:{key}:{index}", math.ceil(limit.seconds) + 1, retry_after


def hit(name: str, key: str, now: float | None = None) -> Verdict:
    """Count one event for ``key`` under limit ``name``; refused once the window's count passes it."""
    now = time.time() if now is None else now
    limit, cache_key, ttl, retry_after = _window(name, key, now)
    if not limit.enabled or not key:
        return ALLOWED
    try:
        if cache.add(cache_key, 1, timeout=ttl):
            count = 1
        else:
            try:
                count = cache.incr(cache_key)
            except ValueError:  # expired between add and incr
                cache.add(cache_key, 1, timeout=ttl)
                count = 1
    except Exception as exc:  # noqa: BLE001 - fail open, see the module docstring
        log.warning("rate limit %s not counted (cache error: %s)", name, exc)
        return ALLOWED
    return ALLOWED if count <= limit.requests else Verdict(False, name, retry_after)


def peek(name: str, key: str, now: float | None = None) -> Verdict:
    """Whether ``key`` is already over limit ``name``, without counting anything."""
    now = time.time() if now is None else now
    limit, cache_key, _, retry_after = _window(name, key, now)
    if not limit.enabled or not key:
        return ALLOWED
    try:
        count = cache.get(cache_key) or 0
    except Exception as exc:  # noqa: BLE001
        log.warning("rate limit %s not read (cache error: %s)", name, exc)
        return ALLOWED
    return ALLOWED if count < limit.requests else Verdict(False, name, retry_after)


def hit_all(address: str, address_limit: str, device_id: str | None = None, device_limit: str | None = None) -> Verdict:
    """The client address's limit (unless exempt), then the device's; the first refusal wins."""
    if not exempt(address):
        verdict = hit(address_limit, address)
        if not verdict.allowed:
            return verdict
    if device_id and device_limit:
        return hit(device_limit, device_id)
    return ALLOWED


ahit_all = sync_to_async(hit_all, thread_sensitive=False)


def too_many_requests(verdict: Verdict, message: str = "too many requests") -> JsonResponse:
    response = JsonResponse({"error": message, "limit": verdict.limit, "retry_after": verdict.retry_after}, status=429)
    response["Retry-After"] = str(verdict.retry_after)
    return response


def reset() -> None:
    """Forget every count (tests): Redis keys by pattern, the local-memory cache entirely."""
    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern(f"{KEY_PREFIX}*")
    else:
        cache.clear()
