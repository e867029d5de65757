"""One spelling for device ids.

Firmware sends the MAC as ``aa:bb:cc:dd:ee:ff`` but other clients send upper case or dashes; the
same board must map to the same Device row and the same auth token whichever form it uses.
"""
from __future__ import annotations

import re

# 6 ASCII pairs separated by ':' or '-', as the reference server accepts. Matched before lowering
# the case, so no non-ASCII letter can lower itself into an id (the Kelvin sign lowers to "k").
_DEVICE_ID = re.compile(r"[0-9A-Za-z]{2}(?:[:-][0-9A-Za-z]{2}){5}")


def normalize_device_id(raw: str | None) -> str | None:
    """The canonical id (lower case, ':'-separated), or None when ``raw`` is not a MAC-like id."""
    if not isinstance(raw, str) or not _DEVICE_ID.fullmatch(raw.strip()):
        return None
    return raw.strip().lower().replace("-", ":")
