"""A turn's reply when the LLM may call tools: ask, run what it asks for, give it the results,
ask again, until it answers in words (or the step budget runs out).

Socket-free: the turn passes the LLM as ``llm_stream(messages, tools)`` (an async iterator of
text deltas and ``ToolCall``s, or their wire dicts from a worker) and the tools as a ``Toolset``.
What the user hears is only the text of the answer; the calls are kept in ``steps`` for the turn
record. Cancelling the consuming task (abort, barge-in) cancels a running tool call too.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass

from voice.tools.model import ToolCall, ToolResult
from voice.tools.toolset import Toolset

log = logging.getLogger(__name__)

CANCELLED = "cancelled: the turn ended during the call"
MAX_CALLS_PER_STEP = 4  # calls the LLM may ask for at once; more are answered "not run"

LLMStream = Callable[[list[dict], "list[dict] | None"], AsyncIterator]


@dataclass
class ToolStep:
    """One tool call of a turn, as the turn record keeps it."""

    name: str  # the tool's own name (an MCP name keeps its dots)
    arguments: dict
    result: str
    is_error: bool
    seconds: float

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def service_stream(service, llm_name: str, owner: str | None = None, model: str | None = None) -> LLMStream:
    """``llm_stream`` over a voice service (local threads or Celery): the ``reply_stream``
    operation with the offered tools, whose calls come back as wire dicts. ``model``: the agent's
    ``llm_model``, for providers that serve several."""

    def stream(messages: list[dict], tools: list[dict] | None) -> AsyncIterator:
        return service.stream("reply_stream", llm_name, messages, tools, model, owner=owner)

    return stream


def session_toolset(mcp=None, device_id: str | None = None, session_id: str = "") -> Toolset:
    """A session's tools: its device's (if its MCP client listed any) and the server's."""
    from django.conf import settings

    from voice.tools.model import ToolContext
    from voice.tools.server import server_tools

    if not settings.XIAOZHI_TOOLS_ENABLED:
        return Toolset()
    device_tools = mcp.tools if mcp is not None and not mcp.closed else ()
    return Toolset(device_tools, server_tools(), device_call=mcp.call if mcp is not None else None,
                   context=ToolContext(device_id=device_id, session_id=session_id))


def stock_toolset() -> Toolset:
    """The tools of a device running the stock firmware (its common tools, ``voice.mcp.firmware``)
    and the server's: what most sessions are offered, so what is worth preparing at start-up."""
    from voice.mcp.client import tool_from_mcp
    from voice.mcp.firmware import FIRMWARE_TOOLS
    from voice.tools.server import server_tools

    return Toolset([tool_from_mcp(t) for t in FIRMWARE_TOOLS], server_tools())


async def start_device_tools(mcp, llm_service, llm_name: str, vision=None, device_id: str | None = None,
                             session_id: str = "") -> None:
    """After the hello: list the device's tools over MCP (``McpClient.start``), then let the LLM
    prepare its tool decision for the session's tools (best effort, off any turn's path: the
    bundled model's router evaluates its prompt once per tool list; a no-op for native callers)."""
    await mcp.start(vision=vision)
    toolset = session_toolset(mcp, device_id, session_id)
    if not toolset:
        return
    try:
        await llm_service.call("prefill_tools", llm_name, toolset.specs(), owner=device_id)
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        log.debug("prefill_tools skipped: %s", exc)


class ToolLoop:
    def __init__(self, toolset: Toolset, llm_stream: LLMStream, max_steps: int = 3):
        self.toolset = toolset
        self.llm_stream = llm_stream
        self.max_steps = max_steps
        self.steps: list[ToolStep] = []
        self.end_conversation = False  # a tool asked to close the session after this reply

    async def reply(self, messages: Sequence[dict]) -> AsyncIterator[str]:
        """Text deltas of the final answer. ``messages`` is not changed."""
        messages = list(messages)
        for step in range(self.max_steps + 1):
            offered = self.toolset.specs() if self.toolset and step < self.max_steps else None
            text: list[str] = []
            calls: list[ToolCall] = []
            async with aclosing(self.llm_stream(messages, offered)) as stream:
                async for item in stream:
                    call = ToolCall.from_wire(item)
                    if call is not None:
                        calls.append(call)
                    elif isinstance(item, str) and item:
                        text.append(item)
                        yield item
            if not calls:
                return
            if offered is None:  # tools were not offered: a call now is the model misbehaving
                log.warning("the LLM asked for %d tool calls without being offered tools: ignored", len(calls))
                return
            messages.append({"role": "assistant", "content": "".join(text) or None,
                             "tool_calls": [c.as_message() for c in calls]})
            direct: list[str] = []
            for index, call in enumerate(calls):
                result = await self._run(call) if index < MAX_CALLS_PER_STEP else ToolResult.error(
                    f"not run: at most {MAX_CALLS_PER_STEP} tool calls at once")
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result.text})
                if result.end_conversation:
                    self.end_conversation = True
                if result.reply and not result.is_error:
                    direct.append(result.reply)
            if direct and len(direct) == len(calls):
                # Every tool said what to answer (the time, a farewell): no second model call.
                yield ("" if not text else " ") + " ".join(direct)
                return

    async def _run(self, call: ToolCall) -> ToolResult:
        started = time.monotonic()
        name = self.toolset.tool_name(call.name)
        try:
            result = await self.toolset.execute(call)
        except asyncio.CancelledError:  # abort, barge-in, disconnect: the record shows the call was cut
            self.steps.append(ToolStep(name, dict(call.arguments), CANCELLED, True, time.monotonic() - started))
            raise
        seconds = time.monotonic() - started
        self.steps.append(ToolStep(name, dict(call.arguments), result.text, result.is_error, seconds))
        log.info("tool %s(%s) -> %s%.200s (%.0f ms)", name, call.arguments, "ERROR " if result.is_error else "",
                 result.text, seconds * 1000)
        return result
