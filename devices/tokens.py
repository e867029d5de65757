"""WebSocket bearer tokens handed out by the OTA endpoint.

The token is an HMAC over client id, device id and issue time, so the server can check it without
storing anything, and a token copied from one device does not work for another.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time

from django.conf import settings

MAX_CLOCK_SKEW_SECONDS = 300


def _signature(client_id: str, device_id: str, ts: int) -> str:
    message = f"{client_id}|{device_id}|{ts}".encode()
    digest = hmac.new(settings.XIAOZHI_AUTH_SECRET.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue_token(client_id: str, device_id: str, now: float | None = None) -> str:
    ts = int(time.time() if now is None else now)
    return f"{_signature(client_id, device_id, ts)}.{ts}"


def verify_token(token: str, client_id: str, device_id: str, now: float | None = None) -> bool:
    """True only for an unexpired token issued for exactly this client and device; never raises."""
    if not isinstance(token, str) or not isinstance(client_id, str) or not isinstance(device_id, str):
        return False
    token = token.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    signature, _, ts_text = token.rpartition(".")
    if not signature or not (ts_text.isascii() and ts_text.isdigit()) or len(ts_text) > 12:
        return False
    ts = int(ts_text)
    current = time.time() if now is None else now
    if current - ts > settings.XIAOZHI_TOKEN_TTL_SECONDS or ts - current > MAX_CLOCK_SKEW_SECONDS:
        return False
    expected = _signature(client_id, device_id, ts)
    return hmac.compare_digest(signature.encode("utf-8", "replace"), expected.encode("ascii"))
