"""The client's address, for HTTP requests and WebSocket scopes alike.

``X-Forwarded-For`` and ``X-Real-IP`` are anyone's to write: they are believed only when the peer
itself is one of ``XIAOZHI_TRUSTED_PROXIES``. Then the client is the right-most address of
``X-Forwarded-For`` that is not a trusted proxy (each proxy appends the peer it saw, so the entries
left of the first untrusted one may be forged), or ``X-Real-IP`` without it. Rate limits, the
per-address socket cap and the session's ``remote_addr`` all use this one answer.
"""
from __future__ import annotations

import ipaddress

from django.conf import settings


def _ip(text: str):
    text = (text or "").strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_in(address: str, networks) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in network for network in networks)


def from_peer_and_headers(peer: str, headers) -> str:
    """The client address given the TCP peer and a header lookup (lower-case names -> value)."""
    trusted = settings.XIAOZHI_TRUSTED_PROXIES
    if not peer or not is_in(peer, trusted):
        return peer or ""
    forwarded = [part.strip() for part in (headers.get("x-forwarded-for") or "").split(",") if part.strip()]
    nearest = None  # the last hop seen, all trusted so far
    for hop in reversed(forwarded):
        ip = _ip(hop)
        if ip is None:
            break  # a garbled entry: nothing left of it can be trusted
        if not any(ip in network for network in trusted):
            return str(ip)
        nearest = ip
    if forwarded:
        return str(nearest) if nearest is not None else peer
    real = _ip(headers.get("x-real-ip") or "")
    return str(real) if real is not None else peer


def scope_headers(scope) -> dict[str, str]:
    """An ASGI scope's headers by lower-case name (the last of repeated ones)."""
    return {bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
            for name, value in scope.get("headers", [])}


def client_address(request_or_scope) -> str:
    """The client address of a Django request or an ASGI (websocket/http) scope; "" when unknown."""
    if isinstance(request_or_scope, dict):
        client = request_or_scope.get("client") or ("",)
        return from_peer_and_headers(str(client[0] or ""), scope_headers(request_or_scope))
    request = request_or_scope
    headers = {"x-forwarded-for": request.META.get("HTTP_X_FORWARDED_FOR", ""),
               "x-real-ip": request.META.get("HTTP_X_REAL_IP", "")}
    return from_peer_and_headers(request.META.get("REMOTE_ADDR", ""), headers)
