"""Who is on the other end of a device WebSocket.

ESP32 firmware sends no ``Origin`` header, so Channels' origin validators would refuse it; devices
identify themselves with ``Device-Id``/``Client-Id``/``Authorization`` headers instead (browsers,
which cannot set headers, put them in the query string). Identification only records the verdict:
the consumer accepts and then closes with the error code, so the device can show why.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from urllib.parse import parse_qs

from django.conf import settings

from devices import rate_limits
from devices.client_address import client_address
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
    remote_addr = client_address(scope)
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


async def rate_limited(identity: DeviceIdentity) -> DeviceIdentity:
    """Every handshake counts against its address's and its device's limits, refused ones too (a
    flood of bad tokens is still a flood); over a limit the verdict becomes 4429."""
    verdict = await rate_limits.ahit_all(identity.remote_addr, "handshake_per_address",
                                         identity.device_id, "handshake_per_device")
    if verdict.allowed:
        return identity
    logger.warning("Refused device %s from %s: over rate limit %s", identity.device_id, identity.remote_addr,
                   verdict.limit)
    return dataclasses.replace(identity, error_code=CloseCode.RATE_LIMITED,
                               error_reason=f"too many connections; retry in {verdict.retry_after} s")


class DeviceAuthMiddleware:
    """ASGI middleware putting ``scope["device_identity"]`` on websocket scopes; it never closes."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "websocket":
            scope = dict(scope, device_identity=await rate_limited(identify(scope)))
        return await self.inner(scope, receive, send)
