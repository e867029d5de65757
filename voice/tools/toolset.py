"""One turn's tools: the device's (over MCP) and the server's, under names the LLM accepts.

MCP names contain dots (``self.audio_speaker.set_volume``), which OpenAI-style function names may
not; each tool gets a sanitised, unique function name and the mapping back is kept here, so the
LLM, the turn record and the device each see the name they expect.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from voice.tools.model import ServerTool, Tool, ToolCall, ToolContext, ToolResult, function_name, function_specs

log = logging.getLogger(__name__)

DeviceCall = Callable[[str, Mapping], Awaitable[ToolResult]]  # McpClient.call(name, arguments)


@dataclass(frozen=True)
class Entry:
    function: str  # the name the LLM sees
    tool: Tool
    server: ServerTool | None  # None: a device tool


class Toolset:
    def __init__(self, device_tools: Sequence[Tool] = (), server_tools: Sequence[ServerTool] = (),
                 device_call: DeviceCall | None = None, context: ToolContext | None = None,
                 server_timeout: float = 30.0):
        """Server tools are named first, so a device cannot take the name of one."""
        self.device_call = device_call
        self.context = context or ToolContext()
        self.server_timeout = server_timeout
        taken: set[str] = set()
        self._entries: dict[str, Entry] = {}
        for server in server_tools:
            entry = Entry(function_name(server.tool.name, taken), server.tool, server)
            self._entries[entry.function] = entry
        for tool in device_tools:
            entry = Entry(function_name(tool.name, taken), tool, None)
            self._entries[entry.function] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())

    def specs(self) -> list[dict]:
        """The OpenAI ``tools`` list (also what the bundled model's router is built from)."""
        return function_specs([(e.function, e.tool) for e in self._entries.values()])

    def function_for(self, tool_name: str) -> str | None:
        return next((e.function for e in self._entries.values() if e.tool.name == tool_name), None)

    def tool_name(self, function: str) -> str:
        """The tool's own name (the MCP name, dots and all) for a function name the LLM used."""
        entry = self._entries.get(function)
        return entry.tool.name if entry else function

    async def execute(self, call: ToolCall) -> ToolResult:
        """Run one call; any failure is an error result for the LLM, never an exception (but
        cancellation, on abort, passes through)."""
        if call.problem:
            return ToolResult.error(call.problem)
        entry = self._entries.get(call.name)
        if entry is None:
            return ToolResult.error(f"there is no tool named {call.name!r}")
        if entry.server is None:
            if self.device_call is None:
                return ToolResult.error("the device is not connected")
            return await self.device_call(entry.tool.name, call.arguments)
        try:
            async with asyncio.timeout(self.server_timeout):
                result = await _run_handler(entry.server, call.arguments, self.context)
        except TimeoutError:
            return ToolResult.error(f"{entry.tool.name} took longer than {self.server_timeout:g} s")
        except Exception as exc:  # noqa: BLE001 - a deployment's tool may fail in any way
            log.warning("server tool %s failed: %s", entry.tool.name, exc, exc_info=True)
            return ToolResult.error(f"{entry.tool.name} failed: {exc}")
        return result if isinstance(result, ToolResult) else ToolResult(str(result))


async def _run_handler(server: ServerTool, arguments: dict, context: ToolContext):
    if inspect.iscoroutinefunction(server.handler):
        return await server.handler(arguments, context)
    result = await asyncio.to_thread(server.handler, arguments, context)  # may block (HTTP, files)
    return await result if inspect.isawaitable(result) else result
