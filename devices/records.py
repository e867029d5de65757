"""Database steps of a device's life: OTA polls, connections, turns and activation.

Plain synchronous functions so the async consumer can run each one through
``database_sync_to_async``. Updates that race with other connections of the same device are
written as conditional UPDATEs, so two workers never undo each other's work.
"""
from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from devices.auth import DeviceIdentity
from devices import session_owner
from devices.models import AgentConfig, Device, DeviceSession, Turn, VisionQuery, default_session_config
from voice.pipeline.turn_row import TurnRow

class BoundElsewhere(Exception):
    """The device is bound to another Client-Id: no token and no session for this one."""

    def __init__(self, device_id: str, client_id: str):
        super().__init__(f"device {device_id} is bound to another client")
        self.device_id, self.client_id = device_id, client_id


@dataclass
class ConnectionInfo:
    device_pk: int
    session_pk: int
    session_id: str
    activated: bool
    activation_code: str | None
    agent: dict
    memory: str = ""  # the device's memory when its agent keeps one (voice/memory.py)


def _clip(value, model, field: str) -> str:
    """Cut text to the column's length: MySQL in strict mode rejects longer values outright."""
    return str(value or "")[: model._meta.get_field(field).max_length]


def get_or_create_device(device_id: str) -> Device:
    device, _ = Device.objects.get_or_create(
        device_id=device_id, defaults={"activated": not settings.XIAOZHI_ACTIVATION_REQUIRED}
    )
    return device


def _claim(device: Device, client_id: str) -> None:
    """Binding on first use: an activated device without a binding is bound to this Client-Id
    (with activation off every device is activated from its first poll). A bound device refuses any
    other Client-Id. Unactivated devices stay unbound until their code is bound in the admin."""
    client_id = _clip(client_id, Device, "bound_client_id")
    if device.bound_client_id:
        if device.bound_client_id != client_id:
            raise BoundElsewhere(device.device_id, client_id)
        return
    if not device.activated:
        if device.client_id and device.client_id != client_id and device.activation_code:
            # The code shown belongs to the client it was issued to: another client polling for the
            # same MAC gets a fresh code, and binding the one it shows binds that client, no other.
            Device.objects.filter(pk=device.pk).update(activation_code="", activation_code_expires_at=None)
            device.activation_code, device.activation_code_expires_at = "", None
        return
    now = timezone.now()
    if Device.objects.filter(pk=device.pk, bound_client_id="").update(bound_client_id=client_id, bound_at=now):
        device.bound_client_id, device.bound_at = client_id, now
        return
    device.refresh_from_db(fields=["bound_client_id", "bound_at"])  # another request bound it first
    if device.bound_client_id != client_id:
        raise BoundElsewhere(device.device_id, client_id)


def reset_binding(queryset) -> int:
    """Forget the devices' bindings: the next Client-Id to poll binds (or, with activation required,
    the device must be activated again with a new code)."""
    updates = {"bound_client_id": "", "bound_at": None}
    if settings.XIAOZHI_ACTIVATION_REQUIRED:
        updates.update(activated=False, activation_code="", activation_code_expires_at=None)
    return queryset.update(**updates)


def needs_activation(device: Device) -> bool:
    return settings.XIAOZHI_ACTIVATION_REQUIRED and not device.activated


def agent_config_for(device: Device) -> dict:
    agent = device.agent or AgentConfig.objects.filter(is_default=True).order_by("-updated_at").first()
    return agent.session_config() if agent else default_session_config()


def _new_activation_code() -> str:
    while True:
        code = f"{secrets.randbelow(1_000_000):06d}"
        if not Device.objects.filter(activation_code=code).exists():
            return code


def ensure_activation_code(device: Device) -> str:
    """The device's unexpired code, or a fresh one; concurrent polls end up sharing one code."""
    now = timezone.now()
    if device.activation_code and device.activation_code_expires_at and device.activation_code_expires_at > now:
        return device.activation_code
    code = _new_activation_code()
    expires_at = now + timedelta(seconds=settings.XIAOZHI_ACTIVATION_CODE_TTL_SECONDS)
    changed = Device.objects.filter(pk=device.pk, activation_code=device.activation_code).update(
        activation_code=code, activation_code_expires_at=expires_at
    )
    if not changed:  # another request renewed it first: use theirs
        device.refresh_from_db(fields=["activation_code", "activation_code_expires_at"])
        return device.activation_code
    device.activation_code, device.activation_code_expires_at = code, expires_at
    return code


def bind_activation_code(code: str, agent: AgentConfig | None = None) -> Device:
    """Activate the device showing ``code``; ValueError says why a code cannot be used."""
    code = (code or "").strip()
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        raise ValueError("An activation code is 6 digits.")
    device = Device.objects.filter(activation_code=code).first()
    if device is None:
        raise ValueError(f"No device is waiting with activation code {code}.")
    if not device.activation_code_expires_at or device.activation_code_expires_at <= timezone.now():
        raise ValueError(f"Activation code {code} has expired; restart the device to get a new one.")
    updates = {"activated": True, "activation_code": "", "activation_code_expires_at": None,
               "bound_client_id": _clip(device.client_id or device.device_id, Device, "bound_client_id"),
               "bound_at": timezone.now()}
    if agent is not None:
        updates["agent"] = agent
    if not Device.objects.filter(pk=device.pk, activation_code=code).update(**updates):
        raise ValueError(f"Activation code {code} was just used or renewed; try again.")
    device.refresh_from_db()
    return device


def record_ota_poll(device_id: str, client_id: str, board: str, firmware_version: str) -> Device:
    """Raises BoundElsewhere (and records nothing) for a bound device polled by another Client-Id."""
    device = get_or_create_device(device_id)
    _claim(device, client_id)
    device.client_id = _clip(client_id, Device, "client_id")
    device.board = _clip(board, Device, "board") or device.board
    device.firmware_version = _clip(firmware_version, Device, "firmware_version") or device.firmware_version
    device.last_seen = timezone.now()
    device.save(update_fields=["client_id", "board", "firmware_version", "last_seen"])
    return device


def register_connection(identity: DeviceIdentity, protocol_version: int) -> ConnectionInfo:
    if not identity.device_id:
        raise ValueError("register_connection needs an identified device")
    device = get_or_create_device(identity.device_id)
    _claim(device, identity.client_id)  # BoundElsewhere before anything is written
    # The session row goes in before the device is marked online: a concurrent close of an older
    # socket then either sees this session open or is followed by our online=True.
    session = DeviceSession.objects.create(
        device=device,
        session_id=uuid.uuid4(),
        remote_addr=_clip(identity.remote_addr, DeviceSession, "remote_addr"),
        protocol_version=protocol_version,
        heartbeat_at=timezone.now(),
        **session_owner.this_process().fields(),
    )
    device.client_id = _clip(identity.client_id, Device, "client_id")
    device.online = True
    device.last_seen = timezone.now()
    device.save(update_fields=["client_id", "online", "last_seen"])
    activated = not needs_activation(device)
    return ConnectionInfo(
        device_pk=device.pk,
        session_pk=session.pk,
        session_id=str(session.session_id),
        activated=activated,
        activation_code=None if activated else ensure_activation_code(device),
        agent=(agent := agent_config_for(device)),
        memory=device.memory if agent.get("memory_enabled") else "",
    )


def close_connection(session_pk: int, reason: str) -> None:
    now = timezone.now()
    reason = _clip(reason, DeviceSession, "close_reason")
    DeviceSession.objects.filter(pk=session_pk, ended_at__isnull=True).update(ended_at=now, close_reason=reason)
    device_pk = DeviceSession.objects.filter(pk=session_pk).values_list("device_id", flat=True).first()
    if device_pk is None:
        return
    # A newer socket of the same device may still be open: it keeps the device online.
    open_sessions = DeviceSession.objects.filter(device_id=OuterRef("pk"), ended_at__isnull=True)
    Device.objects.filter(pk=device_pk).filter(~Exists(open_sessions)).update(online=False, last_seen=now)


def record_turn(device_pk: int, session_pk: int | None, row: TurnRow) -> int:
    speech_end_at = row.speech_end_at
    if speech_end_at is not None and timezone.is_naive(speech_end_at):
        speech_end_at = timezone.make_aware(speech_end_at)
    turn_pk = Turn.objects.create(
        device_id=device_pk, session_id=session_pk,
        user_text=str(row.user_text or ""), reply_text=str(row.reply_text or ""),
        error=_clip(row.error, Turn, "error"), interrupted=bool(row.interrupted),
        speech_end_at=speech_end_at, timings=dict(row.timings or {}), tool_calls=list(row.tool_calls or ()),
        **row.latencies(),
    ).pk
    if session_pk is not None:  # photos the camera tool took during this turn (its row comes at its end)
        VisionQuery.objects.filter(session_id=session_pk, turn__isnull=True).update(turn_id=turn_pk)
    return turn_pk


def touch_device(device_pk: int) -> None:
    Device.objects.filter(pk=device_pk).update(last_seen=timezone.now())


def expire_devices(now: datetime | None = None) -> int:
    """Delete devices that never activated or never opened a session, unseen for
    XIAOZHI_DEVICE_EXPIRY_SECONDS (what a flood of OTA posts with made-up MACs leaves behind).
    Devices an administrator gave an agent are kept."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.XIAOZHI_DEVICE_EXPIRY_SECONDS)
    ever_connected = DeviceSession.objects.filter(device_id=OuterRef("pk"))
    stale = (Device.objects.filter(online=False, agent__isnull=True)
             .filter(Q(last_seen__lt=cutoff) | Q(last_seen__isnull=True, created_at__lt=cutoff))
             .filter(Q(activated=False) | ~Exists(ever_connected)))
    deleted, by_model = stale.delete()
    return by_model.get(Device._meta.label, 0)
