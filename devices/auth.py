"""Who is on the other end of a device WebSocket.

ESP32 firmware sends no ``Origin`` header, so Channels' origin validators would refuse it; devices
identify themselves with ``Device-Id``/``Client-Id``/``Authorization`` headers instead (browsers,
which cannot set headers, put them in the query string). Identification only records the verdict:
the consumer accepts and then closes with the error code, so the device can show why.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import parse_qs

from django.conf import settings

from devices.device_ids import normalize_device_id
from devices.tokens import verify_token
from voice.protocol import CloseCode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str | None
    client_id: str
    protocol_version_header: str | None
    remote_addr: str
    error_code: int | None = None
    error_reason: str = ""


def _headers(scope) -> dict[str, str]:
    pairs = scope.get("headers", [])
    return {bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1") for name, value in pairs}


def _query(scope) -> dict[str, str]:
    raw = scope.get("query_string", b"")
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("latin-1")
    return {name.lower(): values[-1] for name, values in parse_qs(raw, keep_blank_values=True).items()}


def _remote_addr(scope, headers: dict[str, str]) -> str:
    forwarded = headers.get("x-forwarded-for", "").split(",")[0].strip()
    client = scope.get("client") or ("",)
    return headers.get("x-real-ip", "").strip() or forwarded or str(client[0] or "")


def _is_allow_listed(device_id: str) -> bool:
    return device_id in {normalize_device_id(d) for d in settings.XIAOZHI_ALLOWED_DEVICES}


def identify(scope) -> DeviceIdentity:
    """Read the device's identity from a websocket scope and check its token when auth is on."""
    headers = _headers(scope)
    # Query parameters stand in for headers only when the device-id header is absent (browser clients).
    source = headers if "device-id" in headers else {**headers, **_query(scope)}
    raw_device_id = source.get("device-id", "").strip()
    device_id = normalize_device_id(raw_device_id)
    client_id = source.get("client-id", "").strip() or device_id or ""
    remote_addr = _remote_addr(scope, headers)
    protocol_version = headers.get("protocol-version")

    def identity(error_code=None, error_reason=""):
        return DeviceIdentity(device_id, client_id, protocol_version, remote_addr, error_code, error_reason)

    if not raw_device_id:
        return identity(CloseCode.BAD_REQUEST, "missing Device-Id")
    if device_id is None:
        return identity(CloseCode.BAD_REQUEST, "invalid Device-Id")
    if not settings.XIAOZHI_AUTH_ENABLED or _is_allow_listed(device_id):
        return identity()
    token = source.get("authorization", "").strip()
    if token and verify_token(token, client_id, device_id):
        return identity()
    reason = "invalid token" if token else "missing token"
    logger.warning("Refused device %s (client %s) from %s: %s", device_id, client_id, remote_addr, reason)
    return identity(CloseCode.UNAUTHORIZED, reason)


class DeviceAuthMiddleware:
    """ASGI middleware putting ``scope["device_identity"]`` on websocket scopes; it never closes."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "websocket":
            scope = dict(scope, device_identity=identify(scope))
        return await self.inner(scope, receive, send)
