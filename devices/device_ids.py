"""One spelling for device ids.

Firmware sends the MAC as ``aa:bb:cc:dd:ee:ff`` but other clients send upper case or dashes; the
same board must map to the same Device row and the same auth token whichever form it uses.
"""
from __future__ import annotations

import re

_DEVICE_ID = re.compile(r"^[0-9a-z]{2}(:[0-9a-z]{2}){5}$")


def normalize_device_id(raw: str | None) -> str | None:
    """The canonical id (lower case, ':'-separated), or None when ``raw`` is not a MAC-like id."""
    if not isinstance(raw, str):
        return None
    candidate = raw.strip().lower().replace("-", ":")
    return candidate if _DEVICE_ID.match(candidate) else None
