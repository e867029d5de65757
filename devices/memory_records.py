"""Database steps of a device's memory (``voice.memory``): read it, replace it, clear it.

Plain synchronous functions for ``database_sync_to_async``. A replacement is a conditional UPDATE on
the text it was computed from, so an update racing with an admin's edit or clear never undoes it.
"""
from __future__ import annotations

from django.utils import timezone

from devices.models import Device


def load_memory(device_pk: int) -> str | None:
    """The device's memory, or None if the device is gone."""
    return Device.objects.filter(pk=device_pk).values_list("memory", flat=True).first()


def replace_memory(device_pk: int, old: str, new: str) -> bool:
    """Store ``new`` if the memory is still ``old``; False if it changed meanwhile (or the device is gone)."""
    return bool(Device.objects.filter(pk=device_pk, memory=old).update(memory=new, memory_updated_at=timezone.now()))


def clear_memory(queryset) -> int:
    return queryset.update(memory="", memory_updated_at=timezone.now())
