"""Messages from the admin to a device's live connection, wherever it is served.

Several Daphne processes share the channel layer, and each device's live connection is the one
member of its group ``device_group(device_id)`` (``DeviceConsumer`` joins it and closes older
connections of the same device). The admin (a sync view) sends a ``device.command`` to that group
with a reply channel of its own and waits, bounded, for the answer:

- every command is acknowledged within ``ACK_SECONDS`` by the consumer holding the session, so for a
  device that is not connected the admin says so after at most that long (several devices are
  asked at once) instead of hanging the page;
- ``call_tool`` answers twice: the acknowledgement, then the tool's result, within the MCP call
  timeout (performance.yaml ``mcp.call_timeout``) plus ``ACK_SECONDS``.

The admin view waits on its request's own thread (Django's ASGI handler gives each request a
``ThreadSensitiveContext``), while Channels runs the consumers' sync work (closing old database
connections before each message) on the process's shared thread: a waiting view never stalls
the consumer that must answer it, even when the device is served by the same process.

The consumer side (``handle``) runs in the session's process; the slow part (the tool call) runs
as a task the session owns, since a consumer handles one message at a time and the device's
answer arrives as one of those messages.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the admin side never imports the voice session
    from voice.session import VoiceSession

log = logging.getLogger(__name__)

COMMAND = "device.command"  # channel-layer message type: DeviceConsumer.device_command
REPLY = "device.command.reply"
ACK_SECONDS = 2.0
MAX_TEXT = 2000  # characters of an alert field, of tool arguments (JSON) and of a tool's result shown
COMMANDS = ("alert", "reboot", "list_tools", "call_tool")
NOT_CONNECTED = "The device is not connected."


def device_group(device_id: str) -> str:
    """The channel-layer group of one device's live connection."""
    return "device." + device_id.replace(":", "")


class DeviceNotConnected(Exception):
    def __init__(self, detail: str = ""):
        super().__init__(NOT_CONNECTED + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class CommandReply:
    """The live session's answer: ``ok`` and the text to show; ``tools`` for ``list_tools``."""

    ok: bool
    text: str = ""
    tools: list[dict] = field(default_factory=list)


# -- the admin's side (sync Django views) --------------------------------------------------------------
# The live connection answers for itself: the database's open DeviceSession rows and Device.online
# can be stale after a process died, so they are never taken as proof that a device is connected.
def send_alert(device_ids: list[str], status: str, message: str, emotion: str) -> dict[str, CommandReply | DeviceNotConnected]:
    """To several devices at once (the list's action): one ``ACK_SECONDS`` wait in all."""
    return _run_many(device_ids, {"command": "alert", "status": status, "message": message, "emotion": emotion})


def reboot(device_ids: list[str]) -> dict[str, CommandReply | DeviceNotConnected]:
    return _run_many(device_ids, {"command": "reboot"})


def list_tools(device_id: str) -> CommandReply:
    return _run(device_id, {"command": "list_tools"})


def call_tool(device_id: str, name: str, arguments: Mapping) -> CommandReply:
    from voice.conf import mcp_limits

    return _run(device_id, {"command": "call_tool", "name": name, "arguments": dict(arguments)},
                result_seconds=mcp_limits().call_timeout + ACK_SECONDS)


def _run(device_id: str, command: dict, result_seconds: float | None = None) -> CommandReply:
    """Raises DeviceNotConnected when no live session acknowledges the command in time."""
    from asgiref.sync import async_to_sync

    return async_to_sync(ask)(device_id, command, result_seconds)


def _run_many(device_ids: list[str], command: dict) -> dict[str, CommandReply | DeviceNotConnected]:
    from asgiref.sync import async_to_sync

    async def each() -> list:
        return await asyncio.gather(*(ask(d, command) for d in device_ids), return_exceptions=True)

    answers = async_to_sync(each)()
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, DeviceNotConnected):
            raise answer
    return dict(zip(device_ids, answers))


async def ask(device_id: str, command: dict, result_seconds: float | None = None) -> CommandReply:
    """Send ``command`` to the device's group and wait for the acknowledgement (``ACK_SECONDS``)
    and, with ``result_seconds``, for the result after it."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    # The default prefix, as every consumer of this process has: channels-redis lets one receive
    # of a process at a time read Redis, and it reads only the list its own channel's prefix names,
    # for every waiter. A reply channel of another prefix was read only while no consumer of this
    # process was receiving: with a device served here, its answer sat in Redis unread (the result
    # of a tool call timed out, or a device on another process was reported not connected).
    reply_to = await layer.new_channel()
    await layer.group_send(device_group(device_id), {"type": COMMAND, "reply_to": reply_to, **command})
    try:
        async with asyncio.timeout(ACK_SECONDS):
            first = await layer.receive(reply_to)
    except TimeoutError:
        raise DeviceNotConnected(f"no live connection answered within {ACK_SECONDS:g} s") from None
    if result_seconds is None or not first.get("accepted"):
        return _reply(first)
    try:
        async with asyncio.timeout(result_seconds):
            return _reply(await layer.receive(reply_to))
    except TimeoutError:
        return CommandReply(False, f"no result within {result_seconds:g} s")


def _reply(message: Mapping) -> CommandReply:
    tools = message.get("tools")
    return CommandReply(bool(message.get("ok")), str(message.get("text") or "")[:MAX_TEXT],
                        list(tools) if isinstance(tools, list) else [])


# -- the live connection's side (DeviceConsumer.device_command) -----------------------------------------
async def handle(session: VoiceSession | None, event: Mapping, layer) -> None:
    """Carry out one command on this connection's session and answer on ``reply_to``. A session
    not past its hello (or closing) does not answer: another connection of the device may."""
    reply_to = event.get("reply_to")

    async def answer(ok: bool, text: str = "", **extra) -> None:
        if isinstance(reply_to, str):
            await layer.send(reply_to, {"type": REPLY, "ok": ok, "text": text, **extra})

    if session is None or not session.connected:
        return
    command = event.get("command")
    if command == "alert":
        fields = [event.get(k) for k in ("status", "message", "emotion")]
        if not all(isinstance(f, str) and f for f in fields):
            await answer(False, "an alert needs status, message and emotion, all three non-empty text")
            return
        await session.send_alert(*(f[:MAX_TEXT] for f in fields))
        await answer(True, "Alert sent.")
    elif command == "reboot":
        await session.reboot()
        await answer(True, "Reboot requested.")
    elif command == "list_tools":
        tools = [{"name": t.name, "description": t.description, "parameters": t.parameters}
                 for t in session.device_tools()]
        await answer(True, f"{len(tools)} tools", tools=tools)
    elif command == "call_tool":
        name, arguments = event.get("name"), event.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, Mapping):
            await answer(False, "a tool call needs a tool name and an arguments object")
            return
        await answer(True, "accepted", accepted=True)

        async def call() -> None:
            try:
                result = await session.call_tool(name, arguments)
            except asyncio.CancelledError:  # the session closed under the call
                await answer(False, "the device disconnected during the call")
                raise
            await answer(not result.is_error, result.text)

        session.spawn(call(), "admin-tool-call")
    else:
        await answer(False, f"unknown command {command!r}")
        log.warning("device %s: unknown admin command %.50r", session.config.device_id, command)


def parse_arguments(text: str) -> dict:
    """The admin's JSON arguments: an object, or ValueError saying what is wrong."""
    text = (text or "").strip() or "{}"
    if len(text) > MAX_TEXT:
        raise ValueError(f"at most {MAX_TEXT} characters")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('the arguments must be a JSON object, e.g. {"volume": 30}')
    return value
