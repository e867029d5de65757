"""The OTA ("check version") endpoint every device calls at boot, and its activation poll.

The firmware picks its transport from this answer: it must always carry a ``websocket`` object
and never an ``mqtt`` one, even when the request body is unreadable, or the device is stuck.
"""
from __future__ import annotations

import json
import logging
import time

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from devices import rate_limits, records
from devices.client_address import client_address
from devices.device_ids import normalize_device_id
from devices.models import Device
from devices.tokens import issue_token

logger = logging.getLogger(__name__)

ACTIVATION_TIMEOUT_MS = 30000
RUNNING_TEXT = "The xiaozhi OTA endpoint is running; devices POST their system info here.\n"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "*",
}


def _with_cors(response):
    for name, value in CORS_HEADERS.items():
        response[name] = value
    return response


def _json(payload: dict, status: int = 200):
    return _with_cors(JsonResponse(payload, status=status, json_dumps_params={"ensure_ascii": False}))


def _body(request) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _field(data, *path):
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, str) else ""


def _raw_device_id(request, body: dict) -> str:
    return request.headers.get("Device-Id", "").strip() or _field(body, "mac_address") or _field(body, "board", "mac")


def _device_id_error(raw: str):
    reason = f"invalid Device-Id {raw!r}" if raw else "missing Device-Id header (or mac_address in the body)"
    return _json({"error": reason}, status=400)


def websocket_url(request) -> str:
    """The configured URL, else this server as the request named it: ``get_host()`` checks the Host
    against ALLOWED_HOSTS (400 for any other), so a forged Host cannot send a device elsewhere."""
    if settings.XIAOZHI_WEBSOCKET_URL:
        return settings.XIAOZHI_WEBSOCKET_URL
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}/xiaozhi/v1/"


def _user_agent_parts(request) -> tuple[str, str]:
    board, _, version = request.headers.get("User-Agent", "").partition("/")
    return board.strip(), version.strip()


def _answer(request, device_id: str, client_id: str, firmware_version: str, device: Device | None) -> dict:
    answer = {
        "server_time": {
            "timestamp": int(time.time() * 1000),
            "timezone_offset": settings.XIAOZHI_TIMEZONE_OFFSET_MINUTES,
        },
        "firmware": {"version": firmware_version or "0.0.0", "url": ""},
        "websocket": {
            "url": websocket_url(request),
            "token": issue_token(client_id, device_id) if settings.XIAOZHI_AUTH_ENABLED else "",
            "version": settings.XIAOZHI_BINARY_PROTOCOL_VERSION,
        },
    }
    if device is not None and records.needs_activation(device):
        code = records.ensure_activation_code(device)
        answer["activation"] = {
            "code": code,
            "message": f"{settings.XIAOZHI_ACTIVATION_URL}\n{code}",
            "challenge": device_id,
            "timeout_ms": ACTIVATION_TIMEOUT_MS,
        }
    return answer


def _limited(request, kind: str, device_id: str | None):
    """A 429 (with Retry-After) when the client address or the device is over its ``kind`` limits."""
    verdict = rate_limits.hit_all(client_address(request), f"{kind}_per_address", device_id, f"{kind}_per_device")
    if verdict.allowed:
        return None
    logger.warning("%s: %s from %s over rate limit %s", kind, device_id or "-", client_address(request), verdict.limit)
    return _with_cors(rate_limits.too_many_requests(verdict, f"too many {kind} requests; retry in {verdict.retry_after} s"))


def _bound_elsewhere(request, refused: records.BoundElsewhere):
    logger.warning("OTA: refused device %s to client %s from %s: bound to another client",
                   refused.device_id, refused.client_id, client_address(request))
    return _json({"error": f"device {refused.device_id} is bound to another client; "
                           "an administrator can reset its binding"}, status=403)


@csrf_exempt
def ota(request):
    if request.method == "OPTIONS":
        return _with_cors(HttpResponse(status=200))
    if request.method != "POST":
        return _with_cors(HttpResponse(RUNNING_TEXT, content_type="text/plain; charset=utf-8"))
    body = _body(request)
    raw_device_id = _raw_device_id(request, body)
    device_id = normalize_device_id(raw_device_id)
    refused = _limited(request, "ota", device_id)
    if refused:
        return refused
    if device_id is None:
        return _device_id_error(raw_device_id)
    client_id = request.headers.get("Client-Id", "").strip() or device_id
    ua_board, ua_version = _user_agent_parts(request)
    firmware_version = _field(body, "application", "version") or ua_version
    board = _field(body, "board", "type") or ua_board
    try:
        device = records.record_ota_poll(device_id, client_id, board, firmware_version)
        return _json(_answer(request, device_id, client_id, firmware_version, device))
    except records.BoundElsewhere as refused:
        return _bound_elsewhere(request, refused)
    except DatabaseError:
        # The device can still reach the socket; the connection records it again there.
        logger.exception("OTA: could not record device %s", device_id)
        return _json(_answer(request, device_id, client_id, firmware_version, None))


@csrf_exempt
def activate(request):
    """202 keeps the device polling until someone binds its code in the admin; 200 ends the wait."""
    if request.method == "OPTIONS":
        return _with_cors(HttpResponse(status=200))
    if request.method != "POST":
        return _json({"error": "POST only"}, status=405)
    raw_device_id = _raw_device_id(request, _body(request))
    device_id = normalize_device_id(raw_device_id)
    refused = _limited(request, "activate", device_id)
    if refused:
        return refused
    if device_id is None:
        return _device_id_error(raw_device_id)
    if not settings.XIAOZHI_ACTIVATION_REQUIRED:
        return _json({"status": "activated"})
    device = Device.objects.filter(device_id=device_id).first()
    if device is None:
        return _json({"error": f"unknown device {device_id}; call the OTA endpoint first"}, status=404)
    if device.activated:
        return _json({"status": "activated"})
    return _json({"status": "pending", "message": "waiting for the activation code to be entered"}, status=202)
