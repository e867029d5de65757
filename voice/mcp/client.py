"""A per-connection MCP client: the server asks the device (the MCP server) for its tools and
calls them.

The session routes every incoming ``mcp`` payload to ``handle`` and wraps what ``send`` gets in the
xiaozhi envelope; nothing here touches a socket, so it is tested with plain coroutines. The device
is untrusted input: every reply is checked, nothing it sends raises, and what it can make us keep
(tools, pages, calls in flight) is bounded by ``McpLimits`` (performance.yaml ``mcp``).

Ids are numbers, as the firmware requires: 1 for ``initialize``, 2.. for the ``tools/list`` pages,
and calls from ``CALL_ID_FIRST`` upwards, so a late answer to a list page can never be taken for a
call's (the anchor server reuses 1 and 2 for calls, and they collide).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from voice import live_stats
from voice.conf import McpLimits
from voice.tools.model import Tool, ToolResult

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "2024-11-05"
CLIENT_INFO = {"name": "xiaozhi-server", "version": "1"}
INITIALIZE_ID = 1
LIST_ID_FIRST = 2  # page n of tools/list has id LIST_ID_FIRST + n; max_pages stays far below CALL_ID_FIRST
CALL_ID_FIRST = 10_000
CALL_ID_LAST = 2**31 - 1  # the firmware reads ids into an int
RECENTLY_FORGOTTEN = 32  # ids of timed-out or abandoned calls remembered, so their late answers are expected


class McpClosed(ConnectionError):
    """The connection ended while a request was waiting."""


class McpClient:
    def __init__(self, send: Callable[[dict], Awaitable[None]], limits: McpLimits | None = None,
                 with_user_tools: bool = False, device: str = ""):
        """``send(payload)`` sends one JSON-RPC message to the device (the caller adds the envelope).
        ``with_user_tools`` also lists the tools the firmware keeps for the user (reboot, upgrade)."""
        self._send = send
        self.limits = limits or McpLimits()
        self.with_user_tools = with_user_tools
        self.device = device
        self.tools: tuple[Tool, ...] = ()
        self.server_info: dict = {}
        self.ready = asyncio.Event()  # set once start() is over, whatever its outcome
        self.closed = False
        self._pending: dict[int, asyncio.Future] = {}
        self._forgotten: deque[int] = deque(maxlen=RECENTLY_FORGOTTEN)
        self._call_ids = itertools.count(CALL_ID_FIRST)

    # -- the session's side ---------------------------------------------------------------------------
    async def start(self, vision: Mapping | None = None) -> tuple[Tool, ...]:
        """``initialize`` (announcing the vision endpoint ``{url, token}`` if given), then every page
        of ``tools/list``. Never raises for what the device does: a device that fails or never
        answers just has no (or fewer) tools, and the reason is logged."""
        try:
            capabilities = {"vision": dict(vision)} if vision else {}
            reply = await self._request(INITIALIZE_ID, "initialize", {
                "protocolVersion": PROTOCOL_VERSION, "capabilities": capabilities, "clientInfo": CLIENT_INFO,
            }, self.limits.list_timeout)
            if "error" in reply:
                log.warning("device %s refused MCP initialize: %s", self.device, _error_message(reply))
                return self.tools
            result = reply.get("result")
            if isinstance(result, Mapping) and isinstance(result.get("serverInfo"), Mapping):
                self.server_info = dict(result["serverInfo"])
            self.tools = await self._list_tools()
            log.info("device %s offers %d MCP tools: %s", self.device, len(self.tools),
                     ", ".join(t.name for t in self.tools))
        except McpClosed:
            log.debug("device %s disconnected before its tools were listed", self.device)
        except TimeoutError as exc:
            log.warning("device %s: MCP %s", self.device, exc)
        except Exception as exc:  # noqa: BLE001 - a broken device must not break the session
            log.warning("device %s: MCP start failed: %s", self.device, exc, exc_info=True)
        finally:
            self.ready.set()
        return self.tools

    def handle(self, payload) -> None:
        """One JSON-RPC message from the device. Replies wake their request; everything else
        (notifications, requests to us, unknown or non-numeric ids, garbage) is logged and dropped."""
        if not isinstance(payload, Mapping):
            log.warning("device %s sent an MCP payload that is not an object: %.200r", self.device, payload)
            live_stats.incr("errors:mcp:malformed")
            return
        msg_id = payload.get("id")
        if "method" in payload:
            method = payload.get("method")
            if msg_id is None or (isinstance(method, str) and method.startswith("notifications")):
                log.debug("device %s MCP notification %r ignored", self.device, method)
            else:
                log.info("device %s sent an MCP request %r (id %r); the server offers no methods", self.device, method, msg_id)
                live_stats.incr("errors:mcp:request")
            return
        if isinstance(msg_id, bool) or not isinstance(msg_id, int):
            log.warning("device %s sent an MCP reply with a non-numeric id %.50r: ignored", self.device, msg_id)
            live_stats.incr("errors:mcp:bad_id")
            return
        future = self._pending.pop(msg_id, None)
        if future is None:
            level = logging.DEBUG if msg_id in self._forgotten else logging.WARNING
            log.log(level, "device %s answered MCP id %d, which nothing waits for: ignored", self.device, msg_id)
            live_stats.incr("mcp:late_answers" if msg_id in self._forgotten else "errors:mcp:unknown_id")
            return
        if "result" not in payload and "error" not in payload:
            payload = {**payload, "error": {"message": "the reply has neither result nor error"}}
        if not future.done():
            future.set_result(dict(payload))

    def close(self) -> None:
        """The connection is gone: every waiting request fails at once, later calls fail fast."""
        self.closed = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(McpClosed("the device disconnected"))
        self.ready.set()

    # -- the turn's side --------------------------------------------------------------------------------
    def has_tool(self, name: str) -> bool:
        return any(tool.name == name for tool in self.tools)

    @property
    def pending_calls(self) -> int:
        return sum(1 for i in self._pending if i >= CALL_ID_FIRST)

    async def call(self, name: str, arguments: Mapping | None = None, timeout: float | None = None) -> ToolResult:
        """``tools/call``: the tool's text content, or an error result that says why (unknown tool,
        too many calls in flight, the device refused, timed out, or disconnected). Cancelling the
        awaiting task (abort, barge-in) forgets the call; its late answer is then ignored."""
        if self.closed:
            return ToolResult.error("the device is not connected")
        if not self.has_tool(name):
            return ToolResult.error(f"the device has no tool named {name!r}")
        if self.pending_calls >= self.limits.max_pending_calls:
            return ToolResult.error(f"the device already has {self.pending_calls} tool calls in flight")
        wait = timeout or self.limits.call_timeout
        call_id = self._next_call_id()
        try:
            reply = await self._request(call_id, "tools/call", {"name": name, "arguments": dict(arguments or {})}, wait)
        except TimeoutError:
            live_stats.incr("errors:mcp:call_timeout")
            return ToolResult.error(f"the device did not answer within {wait:g} s")
        except McpClosed:
            live_stats.incr("errors:mcp:disconnected")
            return ToolResult.error("the device disconnected during the call")
        except (ConnectionError, OSError, RuntimeError) as exc:  # the socket failed under send
            return ToolResult.error(f"could not reach the device: {exc}")
        if "error" in reply:
            return ToolResult.error(_error_message(reply))
        return self._result(reply.get("result"))

    # -- internals -----------------------------------------------------------------------------------
    def _next_call_id(self) -> int:
        call_id = next(self._call_ids)
        if call_id > CALL_ID_LAST:
            self._call_ids = itertools.count(CALL_ID_FIRST + 1)
            call_id = CALL_ID_FIRST
        return call_id

    async def _request(self, msg_id: int, method: str, params: dict, timeout: float) -> dict:
        if self.closed:
            raise McpClosed("the device disconnected")
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            await self._send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise TimeoutError(f"{method} got no answer within {timeout:g} s") from None
        finally:
            if self._pending.get(msg_id) is future:
                del self._pending[msg_id]
                self._forgotten.append(msg_id)

    async def _list_tools(self) -> tuple[Tool, ...]:
        tools: list[Tool] = []
        seen: set[str] = set()
        cursor = ""
        for page in range(self.limits.max_pages):
            params = {"cursor": cursor}
            if self.with_user_tools:
                params["withUserTools"] = True
            reply = await self._request(LIST_ID_FIRST + page, "tools/list", params, self.limits.list_timeout)
            if "error" in reply:
                log.warning("device %s refused tools/list: %s", self.device, _error_message(reply))
                break
            size = len(json.dumps(reply, ensure_ascii=False).encode())
            if size > self.limits.max_page_bytes:
                log.warning("device %s: a tools/list page of %d bytes exceeds mcp.max_page_bytes (%d): listing stops",
                            self.device, size, self.limits.max_page_bytes)
                break
            result = reply.get("result")
            if not isinstance(result, Mapping) or not isinstance(result.get("tools", []), list):
                log.warning("device %s: tools/list result is malformed: %.200r", self.device, result)
                break
            for raw in result.get("tools", []):
                tool = tool_from_mcp(raw)
                if tool is None:
                    log.warning("device %s: malformed tool skipped: %.200r", self.device, raw)
                elif tool.name in seen:
                    continue
                elif len(tools) >= self.limits.max_tools:
                    log.warning("device %s: more than mcp.max_tools (%d) tools; %s and later ones dropped",
                                self.device, self.limits.max_tools, tool.name)
                    return tuple(tools)
                else:
                    seen.add(tool.name)
                    tools.append(tool)
            cursor = result.get("nextCursor")
            if not cursor or not isinstance(cursor, str):
                return tuple(tools)
        else:
            log.warning("device %s: tools/list still had pages after mcp.max_pages (%d): the rest is ignored",
                        self.device, self.limits.max_pages)
        return tuple(tools)

    def _result(self, result) -> ToolResult:
        if not isinstance(result, Mapping):
            return ToolResult.error(f"the device answered with an unreadable result: {str(result)[:200]}")
        parts = []
        for item in result.get("content") or []:
            if isinstance(item, Mapping) and item.get("type") == "text" and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif isinstance(item, Mapping):
                parts.append(f"[{item.get('type', 'unknown')} content]")
        text = "\n".join(parts) or "done"
        cap = self.limits.max_result_chars
        if len(text) > cap:
            text = text[:cap] + " [cut]"
        if result.get("isError") is True:
            return ToolResult(f"error: {text}", is_error=True)
        return ToolResult(text)


def _error_message(reply: Mapping) -> str:
    """The device's error text: the firmware sends ``{"message": ...}`` without a ``code``."""
    error = reply.get("error")
    if isinstance(error, Mapping):
        message = error.get("message")
        code = error.get("code")
        text = str(message) if message else json.dumps(dict(error), ensure_ascii=False)[:200]
        return f"{text} (code {code})" if code is not None else text
    return str(error)[:200]


def tool_from_mcp(raw) -> Tool | None:
    """One entry of a ``tools/list`` page as a Tool; None if it has no usable name."""
    if not isinstance(raw, Mapping):
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > 128:
        return None
    description = raw.get("description")
    schema = raw.get("inputSchema")
    if not isinstance(schema, Mapping) or schema.get("type", "object") != "object":
        schema = {"type": "object", "properties": {}}
    return Tool(name=name, description=description if isinstance(description, str) else "", parameters=dict(schema))
