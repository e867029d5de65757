"""The tool model shared by the MCP client, the LLM providers and the turn.

Plain dataclasses with no imports from the rest of the server, so providers (which run in Celery
workers too) can use them without pulling in sessions or Django. What crosses the worker seam is
their wire form: ``ToolCall.to_wire()`` / ``ToolCall.from_wire()``, msgpack- and JSON-safe.
"""
from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

FUNCTION_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # what OpenAI-style APIs accept as a function name
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
WIRE_KEY = "tool_call"  # an LLM stream item {"tool_call": {...}} is a tool call, a str is text


@dataclass(frozen=True)
class Tool:
    """A tool as the LLM sees it. ``name`` is the tool's own name (an MCP name may contain dots);
    ``parameters`` is the JSON schema of its arguments (an object schema)."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    """The LLM asks for ``name`` (the *function* name it was offered) with ``arguments``.
    ``problem`` is set when the model's arguments could not be read (e.g. malformed JSON): the
    call is then answered with that error instead of being run."""

    id: str
    name: str
    arguments: dict
    problem: str = ""

    def to_wire(self) -> dict:
        return {WIRE_KEY: {"id": self.id, "name": self.name, "arguments": self.arguments, "problem": self.problem}}

    @classmethod
    def from_wire(cls, item) -> ToolCall | None:
        """The call carried by one LLM stream item, None for a text delta."""
        if isinstance(item, ToolCall):
            return item
        if isinstance(item, Mapping) and isinstance(item.get(WIRE_KEY), Mapping):
            body = item[WIRE_KEY]
            arguments = body.get("arguments")
            return cls(str(body.get("id") or ""), str(body.get("name") or ""),
                       dict(arguments) if isinstance(arguments, Mapping) else {}, str(body.get("problem") or ""))
        return None

    def as_message(self) -> dict:
        """This call in an OpenAI ``assistant`` message's ``tool_calls`` list."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass(frozen=True)
class ToolResult:
    """What a tool answered. ``text`` goes back to the LLM. ``end_conversation`` asks the turn to
    close the session after its reply; ``reply``, when set, is spoken as the answer as it is,
    without asking the LLM again (deterministic, and no second model call)."""

    text: str
    is_error: bool = False
    end_conversation: bool = False
    reply: str | None = None

    @classmethod
    def error(cls, message: str) -> ToolResult:
        return cls(f"error: {message}", is_error=True)


Handler = Callable[[dict, "ToolContext"], "str | ToolResult | Awaitable[str | ToolResult]"]


@dataclass(frozen=True)
class ToolContext:
    """What a server tool may know about the turn that called it."""

    device_id: str | None = None
    session_id: str = ""


@dataclass(frozen=True)
class ServerTool:
    """A tool the server runs itself. ``handler(arguments, context)`` may be sync (run on a thread,
    so it may block, e.g. on HTTP) or async; it returns text or a ``ToolResult``."""

    tool: Tool
    handler: Handler


def function_name(name: str, taken: set[str]) -> str:
    """``name`` in the OpenAI function-name alphabet, unique among ``taken`` (which it joins)."""
    base = _INVALID.sub("_", name)[:64] or "tool"
    candidate, n = base, 2
    while candidate in taken:
        suffix = f"_{n}"
        candidate, n = base[: 64 - len(suffix)] + suffix, n + 1
    taken.add(candidate)
    return candidate


def describe_arguments(arguments: Mapping) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())


def function_specs(tools: Sequence[tuple[str, Tool]]) -> list[dict]:
    """OpenAI ``tools`` entries for (function name, tool) pairs."""
    return [{"type": "function", "function": {"name": fname, "description": tool.description,
                                              "parameters": tool.parameters or {"type": "object", "properties": {}}}}
            for fname, tool in tools]
