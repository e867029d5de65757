"""The per-connection MCP client against a scripted device: a coroutine that answers what the
client sends the way the firmware does (numeric ids, paged tools/list, errors without a code)."""
import asyncio
import json

import pytest

from voice.conf import McpLimits
from voice.mcp import CALL_ID_FIRST, INITIALIZE_ID, LIST_ID_FIRST, McpClient
from voice.mcp.firmware import FIRMWARE_TOOLS

TOOLS = [dict(tool) for tool in FIRMWARE_TOOLS]  # the firmware's own descriptions and schemas


class Device:
    """Records what the client sent; answers initialize and tools/list (``page_size`` tools per
    page, with nextCursor) at once unless told otherwise; tools/call waits for the test."""

    def __init__(self, client_factory=None, page_size=2, answer_calls=True, **limits):
        self.sent: list[dict] = []
        self.page_size = page_size
        self.answer_calls = answer_calls
        self.volume = 50
        self.client = McpClient(self.send, McpLimits(**limits), device="test-device")

    async def send(self, payload: dict) -> None:
        self.sent.append(payload)
        json.dumps(payload)  # what the session sends must serialise
        method, msg_id, params = payload["method"], payload["id"], payload.get("params", {})
        if method == "initialize":
            self.reply(msg_id, {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                                "serverInfo": {"name": "test-board", "version": "1.0"}})
        elif method == "tools/list":
            start = int(params.get("cursor") or 0)
            page = TOOLS[start:start + self.page_size]
            result = {"tools": page}
            if start + self.page_size < len(TOOLS):
                result["nextCursor"] = str(start + self.page_size)
            self.reply(msg_id, result)
        elif method == "tools/call" and self.answer_calls:
            name, arguments = params["name"], params["arguments"]
            if name == "self.audio_speaker.set_volume":
                self.volume = arguments["volume"]
                self.reply(msg_id, {"content": [{"type": "text", "text": "true"}], "isError": False})
            elif name == "self.get_device_status":
                self.reply(msg_id, {"content": [{"type": "text", "text": json.dumps({"audio_speaker": {"volume": self.volume}})}],
                                    "isError": False})
            else:
                self.error(msg_id, f"Missing valid argument: {next(iter(arguments), 'x')}")

    def reply(self, msg_id, result):
        asyncio.get_running_loop().call_soon(self.client.handle, {"jsonrpc": "2.0", "id": msg_id, "result": result})

    def error(self, msg_id, message):
        asyncio.get_running_loop().call_soon(self.client.handle, {"jsonrpc": "2.0", "id": msg_id, "error": {"message": message}})

    def methods(self):
        return [p["method"] for p in self.sent]


async def started(**options):
    device = Device(**options)
    await device.client.start()
    return device


async def test_initialize_then_every_tools_list_page_following_next_cursor():
    device = await started(page_size=2)
    assert device.methods() == ["initialize", "tools/list", "tools/list"]
    assert [p["id"] for p in device.sent] == [INITIALIZE_ID, LIST_ID_FIRST, LIST_ID_FIRST + 1]
    assert device.sent[1]["params"] == {"cursor": ""} and device.sent[2]["params"] == {"cursor": "2"}
    assert [t.name for t in device.client.tools] == [t["name"] for t in TOOLS]
    assert device.client.tools[1].parameters["required"] == ["volume"]
    assert device.client.server_info["name"] == "test-board" and device.client.ready.is_set()
    assert all(p["jsonrpc"] == "2.0" for p in device.sent)


async def test_vision_is_announced_in_initialize_and_user_tools_are_a_setting():
    device = Device()
    device.client.with_user_tools = True
    await device.client.start(vision={"url": "http://server/vision", "token": "t0k"})
    assert device.sent[0]["params"]["capabilities"] == {"vision": {"url": "http://server/vision", "token": "t0k"}}
    assert device.sent[1]["params"]["withUserTools"] is True
    plain = await started()
    assert plain.sent[0]["params"]["capabilities"] == {} and "withUserTools" not in plain.sent[1]["params"]


async def test_a_call_gets_the_text_content_and_uses_numeric_ids_of_its_own_range():
    device = await started()
    result = await device.client.call("self.audio_speaker.set_volume", {"volume": 30})
    assert result.text == "true" and not result.is_error
    status = await device.client.call("self.get_device_status", {})
    assert json.loads(status.text) == {"audio_speaker": {"volume": 30}}
    call_ids = [p["id"] for p in device.sent if p["method"] == "tools/call"]
    assert call_ids == [CALL_ID_FIRST, CALL_ID_FIRST + 1]
    assert all(isinstance(i, int) for i in call_ids)
    assert device.sent[-1]["params"] == {"name": "self.get_device_status", "arguments": {}}
    assert device.client.pending_calls == 0


async def test_an_error_without_code_becomes_a_clear_error_result():
    device = await started()
    result = await device.client.call("self.screen.set_brightness", {"level": 3})
    assert result.is_error and result.text == "error: Missing valid argument: level"


async def test_is_error_results_are_errors():
    device = await started(answer_calls=False)
    task = asyncio.create_task(device.client.call("self.get_device_status", {}))
    await asyncio.sleep(0)
    device.client.handle({"jsonrpc": "2.0", "id": device.sent[-1]["id"],
                          "result": {"content": [{"type": "text", "text": "camera busy"}], "isError": True}})
    result = await task
    assert result.is_error and result.text == "error: camera busy"


async def test_unknown_ids_non_numeric_ids_notifications_and_garbage_are_ignored():
    device = await started(answer_calls=False)
    task = asyncio.create_task(device.client.call("self.get_device_status", {}))
    await asyncio.sleep(0)
    call_id = device.sent[-1]["id"]
    for junk in [None, 42, "text", [1, 2], {"jsonrpc": "2.0", "id": 999_999, "result": {}},
                 {"jsonrpc": "2.0", "id": str(call_id), "result": {"content": []}},
                 {"jsonrpc": "2.0", "id": True, "result": {}},
                 {"jsonrpc": "2.0", "method": "notifications/state_changed", "params": {}},
                 {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, {}]:
        device.client.handle(junk)
    assert not task.done() and device.client.pending_calls == 1
    device.client.handle({"jsonrpc": "2.0", "id": call_id, "result": {"content": [{"type": "text", "text": "ok"}]}})
    assert (await task).text == "ok"


async def test_a_reply_with_neither_result_nor_error_is_an_error():
    device = await started(answer_calls=False)
    task = asyncio.create_task(device.client.call("self.get_device_status", {}))
    await asyncio.sleep(0)
    device.client.handle({"jsonrpc": "2.0", "id": device.sent[-1]["id"]})
    assert (await task).is_error


async def test_a_device_that_never_answers_times_out_and_its_late_answer_is_ignored():
    device = await started(answer_calls=False)
    result = await device.client.call("self.get_device_status", {}, timeout=0.05)
    assert result.is_error and "did not answer within 0.05 s" in result.text
    assert device.client.pending_calls == 0
    device.client.handle({"jsonrpc": "2.0", "id": device.sent[-1]["id"], "result": {"content": []}})  # late: dropped


async def test_the_default_timeout_comes_from_the_limits():
    device = await started(answer_calls=False, call_timeout=0.05)
    result = await device.client.call("self.get_device_status", {})
    assert "0.05 s" in result.text


async def test_close_fails_every_pending_call_at_once_and_later_calls_fail_fast():
    device = await started(answer_calls=False, max_pending_calls=4)
    tasks = [asyncio.create_task(device.client.call("self.get_device_status", {})) for _ in range(3)]
    await asyncio.sleep(0)
    assert device.client.pending_calls == 3
    device.client.close()
    results = await asyncio.gather(*tasks)
    assert all(r.is_error and "disconnected" in r.text for r in results)
    assert device.client.pending_calls == 0
    sent = len(device.sent)
    assert "not connected" in (await device.client.call("self.get_device_status", {})).text
    assert len(device.sent) == sent


async def test_close_during_start_ends_it_quietly():
    class Silent(Device):
        async def send(self, payload):
            self.sent.append(payload)

    device = Silent()
    task = asyncio.create_task(device.client.start())
    await asyncio.sleep(0)
    device.client.close()
    assert await task == () and device.client.ready.is_set()


async def test_cancelling_a_call_forgets_it():
    device = await started(answer_calls=False)
    task = asyncio.create_task(device.client.call("self.get_device_status", {}))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert device.client.pending_calls == 0


async def test_pending_calls_are_bounded():
    device = await started(answer_calls=False, max_pending_calls=2)
    tasks = [asyncio.create_task(device.client.call("self.get_device_status", {})) for _ in range(2)]
    await asyncio.sleep(0)
    third = await device.client.call("self.get_device_status", {})
    assert third.is_error and "2 tool calls in flight" in third.text
    assert sum(p["method"] == "tools/call" for p in device.sent) == 2
    device.client.close()
    await asyncio.gather(*tasks)


async def test_an_unknown_tool_is_refused_without_asking_the_device():
    device = await started()
    result = await device.client.call("self.reboot", {})
    assert result.is_error and "no tool named 'self.reboot'" in result.text
    assert "tools/call" not in device.methods()


async def test_tools_per_device_are_bounded():
    device = await started(page_size=3, max_tools=2)
    assert [t.name for t in device.client.tools] == [t["name"] for t in TOOLS[:2]]


async def test_pages_are_bounded_in_number_and_in_bytes():
    device = await started(page_size=1, max_pages=2)
    assert len(device.client.tools) == 2 and device.methods().count("tools/list") == 2
    small = await started(page_size=3, max_page_bytes=2048)  # the firmware's three tools: ~1.1 KB, fits
    assert len(small.client.tools) == 3
    original = TOOLS[0]["description"]
    TOOLS[0]["description"] = "x" * 2000
    try:
        big = await started(page_size=3, max_page_bytes=2048)
    finally:
        TOOLS[0]["description"] = original
    assert big.client.tools == ()


async def test_malformed_tools_are_skipped_and_a_refused_initialize_lists_nothing():
    device = Device()
    original = list(TOOLS)
    TOOLS[1:1] = [{"name": 7}, "junk", {"description": "no name"}]
    try:
        await device.client.start()
    finally:
        TOOLS[:] = original
    assert [t.name for t in device.client.tools] == [t["name"] for t in TOOLS]

    class Refuses(Device):
        async def send(self, payload):
            self.sent.append(payload)
            self.error(payload["id"], "Method not implemented: initialize")

    refused = Refuses()
    assert await refused.client.start() == () and refused.methods() == ["initialize"]


async def test_a_device_that_never_answers_initialize_has_no_tools():
    class Silent(Device):
        async def send(self, payload):
            self.sent.append(payload)

    device = Silent(list_timeout=0.05)
    assert await device.client.start() == () and device.client.ready.is_set()
    assert device.client.pending_calls == 0 and not device.client._pending


async def test_long_results_are_cut():
    device = await started(answer_calls=False, max_result_chars=100)
    task = asyncio.create_task(device.client.call("self.get_device_status", {}))
    await asyncio.sleep(0)
    device.client.handle({"jsonrpc": "2.0", "id": device.sent[-1]["id"],
                          "result": {"content": [{"type": "text", "text": "y" * 500}, {"type": "image"}]}})
    result = await task
    assert result.text == "y" * 100 + " [cut]"


async def test_a_send_that_fails_is_an_error_result():
    device = await started()

    async def broken(payload):
        raise ConnectionError("socket closed")

    device.client._send = broken
    result = await device.client.call("self.get_device_status", {})
    assert result.is_error and "socket closed" in result.text and device.client.pending_calls == 0
