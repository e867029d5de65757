"""Vision for a device's camera tool: what MCP ``initialize`` offers, and the database steps of an upload.

The device learns where to send photos from ``capabilities.vision {url, token}`` in the server's
MCP ``initialize`` (protocol §1.11); the camera tool then POSTs the photo and the question there
(``devices.vision_views``). ``vision_capability`` is what the MCP client puts in that message:
None when the device's agent has no vision provider, so nothing advertises vision and the camera
tool answers by itself.

The token is the WebSocket token's HMAC (``devices.tokens``) over the device id with a ``vision:``
prefix: stateless, bound to this device and client, and never valid as a WebSocket token (a real
device id is a MAC address and cannot start with the prefix).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from devices import records
from devices.models import Device, DeviceSession, VisionQuery, default_session_config
from devices.tokens import issue_token, verify_token

log = logging.getLogger(__name__)

TOKEN_SCOPE = "vision:"
PATH = "/xiaozhi/vision/"


def issue_vision_token(client_id: str, device_id: str, now: float | None = None) -> str:
    return issue_token(client_id, TOKEN_SCOPE + device_id, now=now)


def verify_vision_token(token: str, client_id: str, device_id: str, now: float | None = None) -> bool:
    """True only for an unexpired vision token of exactly this client and device; never raises."""
    return verify_token(token, client_id, TOKEN_SCOPE + device_id, now=now)


def upload_url(host: str | None = None, secure: bool = False) -> str | None:
    """XIAOZHI_VISION_URL, else the WebSocket URL's server with the vision path, else ``host`` (the
    Host header the device's socket came in on); None when none of them is known."""
    if settings.XIAOZHI_VISION_URL:
        return settings.XIAOZHI_VISION_URL
    if settings.XIAOZHI_WEBSOCKET_URL:
        parts = urlsplit(settings.XIAOZHI_WEBSOCKET_URL)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        return urlunsplit((scheme, parts.netloc, PATH, "", ""))
    if host:
        return f"{'https' if secure else 'http'}://{host}{PATH}"
    return None


def agent_for_device(device_id: str) -> dict:
    """The session configuration of the device's agent (the default agent's, or the server's)."""
    device = Device.objects.filter(device_id=device_id).select_related("agent").first()
    return records.agent_config_for(device) if device is not None else default_session_config()


def vision_capability(device_id: str, client_id: str, *, agent: dict | None = None, host: str | None = None,
                      secure: bool = False) -> dict | None:
    """``{"url": ..., "token": ...}`` for MCP ``initialize``'s ``capabilities.vision``, or None.

    ``agent``: the session's agent configuration (``ConnectionInfo.agent``), which saves a database
    read; without it the device's agent is looked up, so call through ``database_sync_to_async``
    then. ``host``/``secure``: the socket's Host header and scheme, used when no URL is configured."""
    agent = agent if agent is not None else agent_for_device(device_id)
    if not agent.get("vllm_provider"):
        return None
    url = upload_url(host, secure)
    if url is None:
        log.warning("vision is configured but no upload URL is known: set XIAOZHI_VISION_URL")
        return None
    return {"url": url, "token": issue_vision_token(client_id or device_id, device_id)}


@dataclass(frozen=True)
class UploadContext:
    """What the upload endpoint needs to know about the device, read in one go."""

    device_pk: int
    needs_activation: bool
    session_pk: int | None  # its open connection, if any: the turn the photo belongs to is recorded there
    vllm_provider: str  # "" = no vision for this device's agent
    vllm_model: str


def upload_context(device_id: str) -> UploadContext | None:
    """None for a device this server does not know."""
    device = Device.objects.filter(device_id=device_id).select_related("agent").first()
    if device is None:
        return None
    agent = records.agent_config_for(device)
    session_pk = (DeviceSession.objects.filter(device=device, ended_at__isnull=True)
                  .order_by("-started_at").values_list("pk", flat=True).first())
    return UploadContext(device_pk=device.pk, needs_activation=records.needs_activation(device),
                         session_pk=session_pk, vllm_provider=agent.get("vllm_provider") or "",
                         vllm_model=agent.get("vllm_model") or "")


def _clip(value, field: str) -> str:
    return str(value or "")[: VisionQuery._meta.get_field(field).max_length]


def record_query(context: UploadContext, *, asked_at: datetime, question: str, answer: str, error: str,
                 seconds: float | None, image: bytes, image_type: str) -> int:
    # The session may have closed while the model looked (the row still belongs to it), or been deleted.
    session_ok = context.session_pk is not None and DeviceSession.objects.filter(pk=context.session_pk).exists()
    return VisionQuery.objects.create(
        device_id=context.device_pk, session_id=context.session_pk if session_ok else None, asked_at=asked_at,
        question=question, answer=answer, error=_clip(error, "error"), provider=_clip(context.vllm_provider, "provider"),
        model=_clip(context.vllm_model, "model"), seconds=seconds, image_bytes=len(image), image_type=image_type,
        image=image if settings.XIAOZHI_VISION_KEEP_IMAGES else None,
    ).pk
