"""The server's own tools (offline) and the registry where a deployment adds its own.

Built in: ``get_time`` (the current time and date in ``XIAOZHI_TIME_ZONE``) and
``end_conversation`` (the user says goodbye: the turn speaks a farewell, sends ``tts stop`` and
the session closes). A deployment names its modules in ``XIAOZHI_EXTRA_TOOLS``; each is a module
with a ``TOOLS`` list of ``ServerTool`` or the dotted path of one ``ServerTool`` (README "Tools").
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from voice.tools.model import ServerTool, Tool, ToolContext, ToolResult

FAREWELL = "Goodbye! Talk to you soon."
NO_ARGUMENTS = {"type": "object", "properties": {}}


class ExtraToolError(ImportError):
    """A path in XIAOZHI_EXTRA_TOOLS does not name tools; the message says which and why."""


def now_text(zone: str, now: datetime | None = None) -> str:
    """The time as a voice assistant says it: ``10:05 on Tuesday, 1 December 2026``."""
    moment = (now or datetime.now(tz=ZoneInfo(zone))).astimezone(ZoneInfo(zone))
    return f"{moment:%H:%M} on {moment:%A}, {moment.day} {moment:%B %Y}"


def time_tool(zone: str) -> ServerTool:
    def handler(arguments: dict, context: ToolContext) -> ToolResult:
        text = now_text(zone)
        return ToolResult(f"It is {text} ({zone}).", reply=f"It is {text}.")

    return ServerTool(Tool("get_time", "Get the current time, day of the week and date.", NO_ARGUMENTS), handler)


def end_conversation_tool() -> ServerTool:
    def handler(arguments: dict, context: ToolContext) -> ToolResult:
        return ToolResult("The conversation ends after this reply.", end_conversation=True, reply=FAREWELL)

    return ServerTool(Tool("end_conversation", "End the conversation when the user says goodbye or wants to stop talking.",
                           NO_ARGUMENTS), handler)


def load_extra_tools(paths: Sequence[str]) -> list[ServerTool]:
    """The ServerTools named by dotted paths (a module's ``TOOLS``, or one object)."""
    found: list[ServerTool] = []
    for path in paths:
        try:
            target = importlib.import_module(path)
        except ImportError as module_error:
            module_name, _, attribute = path.rpartition(".")
            try:
                target = getattr(importlib.import_module(module_name), attribute) if module_name else None
            except (ImportError, AttributeError):
                target = None
            if target is None:
                raise ExtraToolError(f"XIAOZHI_EXTRA_TOOLS: cannot import {path!r} ({module_error})") from None
        tools = getattr(target, "TOOLS", target)
        tools = [tools] if isinstance(tools, ServerTool) else tools
        if not isinstance(tools, list | tuple) or not all(isinstance(t, ServerTool) for t in tools):
            raise ExtraToolError(f"XIAOZHI_EXTRA_TOOLS: {path!r} is neither a ServerTool nor a module with a TOOLS "
                                 "list of voice.tools.model.ServerTool")
        found.extend(tools)
    return found


def server_tools(zone: str | None = None, extra: Sequence[str] | None = None) -> list[ServerTool]:
    """The built-in tools plus the deployment's; by default from the settings."""
    if zone is None or extra is None:
        from django.conf import settings

        zone = settings.XIAOZHI_TIME_ZONE if zone is None else zone
        extra = settings.XIAOZHI_EXTRA_TOOLS if extra is None else extra
    return [time_tool(zone), end_conversation_tool(), *_extra(tuple(extra))]


@functools.cache
def _extra(paths: tuple[str, ...]) -> tuple[ServerTool, ...]:
    return tuple(load_extra_tools(paths))
