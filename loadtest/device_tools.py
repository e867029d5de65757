"""The MCP server of a simulated device, answering as the xiaozhi firmware does (main/mcp_server.cc):
``initialize``, ``tools/list`` in pages that name the next tool in ``nextCursor``, and the common
tools (``voice.mcp.firmware``) over a volume and a brightness it keeps, and with a ``Camera``
(``loadtest.camera``) the firmware's ``self.camera.take_photo``. Errors carry a message and no
``code``, as the firmware sends them; notifications get no reply.

Socket-free: ``answer(payload)`` returns the replies to send (none, or one), so the simulated device,
the tests and a person trying ``talk`` all see the same behaviour. A photo is the one reply that
comes later (its upload takes seconds): ``answer`` returns it as an awaitable of the reply, which the
caller runs in a task of its own and sends when done, so other messages are answered meanwhile.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping

from loadtest.camera import TAKE_PHOTO, Camera
from voice.mcp.firmware import FIRMWARE_TOOLS

SERVER_INFO = {"name": "simulated-board", "version": "1.9.0"}


class FirmwareTools:
    def __init__(self, volume: int = 70, brightness: int = 80, page_size: int = 2, tools=FIRMWARE_TOOLS,
                 camera: Camera | None = None):
        self.volume = volume
        self.brightness = brightness
        self.page_size = max(1, page_size)
        self.camera = camera
        self.tools = [dict(tool) for tool in tools] + ([dict(TAKE_PHOTO)] if camera is not None else [])
        self.requests: list[dict] = []  # every JSON-RPC request received, last 100
        self.calls: list[tuple[str, dict]] = []  # (tool name, arguments) of each tools/call, last 100

    def answer(self, payload) -> list[dict | Awaitable[dict]]:
        if not isinstance(payload, Mapping) or "method" not in payload:
            return []  # a reply or garbage: the firmware answers only requests
        self.requests = [*self.requests[-99:], dict(payload)]
        msg_id, method = payload.get("id"), payload.get("method")
        params = payload.get("params") if isinstance(payload.get("params"), Mapping) else {}
        if msg_id is None:
            return []  # a notification
        if not isinstance(msg_id, int) or isinstance(msg_id, bool):
            return [_error(0, "Invalid id")]  # the firmware reads ids as numbers
        if method == "initialize":
            if self.camera is not None:
                self.camera.on_initialize(dict(params))
            return [_result(msg_id, {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                                     "serverInfo": SERVER_INFO})]
        if method == "tools/list":
            return [_result(msg_id, self._page(str(params.get("cursor") or "")))]
        if method == "tools/call":
            name = params.get("name")
            arguments = params.get("arguments") if isinstance(params.get("arguments"), Mapping) else {}
            self.calls = [*self.calls[-99:], (str(name), dict(arguments))]
            if name == TAKE_PHOTO["name"] and self.camera is not None:
                return [self.camera.answer(dict(payload))]
            return [self._call(msg_id, name, arguments)]
        return [_error(msg_id, f"Method not implemented: {method}")]

    def status(self) -> dict:
        """What ``self.get_device_status`` reports (the firmware's shape, trimmed)."""
        return {"audio_speaker": {"volume": self.volume},
                "screen": {"brightness": self.brightness, "theme": "light"},
                "battery": {"level": 90, "charging": False},
                "network": {"type": "wifi", "ssid": "simulated", "signal": "strong"}}

    def _page(self, cursor: str) -> dict:
        names = [tool["name"] for tool in self.tools]
        start = names.index(cursor) if cursor in names else 0
        page = self.tools[start:start + self.page_size]
        result = {"tools": page}
        if start + self.page_size < len(self.tools):
            result["nextCursor"] = names[start + self.page_size]
        return result

    def _call(self, msg_id: int, name, arguments: Mapping) -> dict:
        if name == "self.get_device_status":
            return _content(msg_id, json.dumps(self.status()))
        if name == "self.audio_speaker.set_volume":
            value = _level(arguments.get("volume"))
            if value is None:
                return _error(msg_id, "Missing valid argument: volume")
            self.volume = value
            return _content(msg_id, "true")
        if name == "self.screen.set_brightness":
            value = _level(arguments.get("brightness"))
            if value is None:
                return _error(msg_id, "Missing valid argument: brightness")
            self.brightness = value
            return _content(msg_id, "true")
        return _error(msg_id, f"Unknown tool: {name}")


def _level(value) -> int | None:
    """An integer 0-100, as the firmware's schema demands (it refuses anything else)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        return None
    return value


def _result(msg_id: int, result: dict) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def _content(msg_id: int, text: str) -> dict:
    return _result(msg_id, {"content": [{"type": "text", "text": text}], "isError": False})


def _error(msg_id: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"message": message}}
