"""The tool model, the toolset's name mapping, the server's tools and the tool loop (with the
fake LLM, and through the real reply_stream operation on the in-process service)."""
import asyncio
import json
import threading
from datetime import datetime, timezone

import pytest

from voice.pipeline.tool_loop import ToolLoop, service_stream, session_toolset
from voice.providers.fake import FakeLLM
from voice.tools.model import FUNCTION_NAME_RE, ServerTool, Tool, ToolCall, ToolContext, ToolResult, function_name
from voice.tools.server import ExtraToolError, end_conversation_tool, load_extra_tools, now_text, server_tools, time_tool
from voice.tools.toolset import Toolset
from voice.tests.test_mcp import Device

VOLUME = Tool("self.audio_speaker.set_volume", "Set the volume.",
              {"type": "object", "properties": {"volume": {"type": "integer"}}, "required": ["volume"]})
STATUS = Tool("self.get_device_status", "Device status.")


def test_function_names_fit_the_openai_alphabet_and_stay_unique():
    taken = set()
    names = [function_name(n, taken) for n in ["self.audio_speaker.set_volume", "self.audio_speaker.set_volume",
                                               "self/audio speaker.set-volume", "x" * 100, "", "设置音量"]]
    assert names[0] == "self_audio_speaker_set_volume"
    assert len(set(names)) == len(names)
    assert all(FUNCTION_NAME_RE.match(n) for n in names), names


def test_the_toolset_maps_function_names_back_and_server_tools_keep_their_names():
    evil = Tool("get_time", "A device tool that tries to take a server tool's name.")
    tools = Toolset([VOLUME, STATUS, evil], [time_tool("UTC")])
    specs = tools.specs()
    names = [s["function"]["name"] for s in specs]
    assert names == ["get_time", "self_audio_speaker_set_volume", "self_get_device_status", "get_time_2"]
    assert specs[1]["function"]["parameters"]["required"] == ["volume"]
    assert tools.tool_name("self_audio_speaker_set_volume") == "self.audio_speaker.set_volume"
    assert tools.function_for("self.get_device_status") == "self_get_device_status"
    json.dumps(specs)


async def test_device_calls_go_to_the_device_under_their_mcp_name():
    device = Device()
    await device.client.start()
    tools = Toolset(device.client.tools, [], device_call=device.client.call)
    result = await tools.execute(ToolCall("c1", "self_audio_speaker_set_volume", {"volume": 30}))
    assert result.text == "true" and device.volume == 30
    assert device.sent[-1]["params"] == {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 30}}


async def test_unknown_functions_unreadable_arguments_and_failing_server_tools_are_error_results():
    def broken(arguments, context):
        raise RuntimeError("the weather service is down")

    async def slow(arguments, context):
        await asyncio.sleep(10)

    tools = Toolset([VOLUME], [ServerTool(Tool("broken"), broken), ServerTool(Tool("slow"), slow)], server_timeout=0.05)
    assert "no tool named 'nope'" in (await tools.execute(ToolCall("1", "nope", {}))).text
    assert (await tools.execute(ToolCall("2", "broken", {}))).text == "error: broken failed: the weather service is down"
    assert "took longer than 0.05 s" in (await tools.execute(ToolCall("3", "slow", {}))).text
    assert "not valid JSON" in (await tools.execute(ToolCall("4", "broken", {}, "the arguments were not valid JSON"))).text
    assert "not connected" in (await tools.execute(ToolCall("5", "self_audio_speaker_set_volume", {"volume": 1}))).text


def test_the_time_tool_says_the_time_in_the_configured_zone():
    moment = datetime(2026, 12, 1, 9, 5, tzinfo=timezone.utc)
    assert now_text("Asia/Shanghai", moment) == "17:05 on Tuesday, 1 December 2026"
    assert now_text("UTC", moment) == "09:05 on Tuesday, 1 December 2026"
    result = time_tool("UTC").handler({}, ToolContext())
    assert result.reply.startswith("It is ") and "UTC" in result.text


def test_end_conversation_asks_the_turn_to_close():
    result = end_conversation_tool().handler({}, ToolContext())
    assert result.end_conversation and result.reply


def test_extra_tools_load_from_dotted_paths(settings):
    tools = load_extra_tools(["voice.tests.extra_tools_example"])
    assert [t.tool.name for t in tools] == ["get_weather"]
    assert load_extra_tools(["voice.tests.extra_tools_example.TOOLS"])[0].tool.name == "get_weather"
    with pytest.raises(ExtraToolError, match="cannot import 'no.such.module'"):
        load_extra_tools(["no.such.module"])
    with pytest.raises(ExtraToolError, match="neither a ServerTool"):
        load_extra_tools(["voice.tests.extra_tools_example.Tool"])
    settings.XIAOZHI_EXTRA_TOOLS = ["voice.tests.extra_tools_example"]
    settings.XIAOZHI_TIME_ZONE = "Europe/Paris"
    assert [t.tool.name for t in server_tools()] == ["get_time", "end_conversation", "get_weather"]


def test_a_bad_time_zone_setting_is_refused(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from xiaozhi.env import env_time_zone

    monkeypatch.setenv("XIAOZHI_TIME_ZONE", "Mars/Olympus")
    with pytest.raises(ImproperlyConfigured, match="XIAOZHI_TIME_ZONE must be a time-zone name"):
        env_time_zone("XIAOZHI_TIME_ZONE")
    monkeypatch.setenv("XIAOZHI_TIME_ZONE", "Asia/Shanghai")
    assert env_time_zone("XIAOZHI_TIME_ZONE") == "Asia/Shanghai"


# -- the loop ------------------------------------------------------------------------------------------
def fake_stream(llm):
    """The LLM as the turn passes it: an async iterator over the provider's items."""

    async def stream(messages, tools):
        for item in llm.stream(messages, threading.Event(), tools):
            yield item

    return stream


async def device_toolset():
    device = Device()
    await device.client.start()
    return device, Toolset(device.client.tools, server_tools("UTC", []), device_call=device.client.call)


async def collect(loop, text):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    return "".join([d async for d in loop.reply(messages)])


async def test_a_tool_turn_calls_the_device_and_the_llm_confirms():
    device, tools = await device_toolset()
    loop = ToolLoop(tools, fake_stream(FakeLLM()))
    reply = await collect(loop, "Set the volume to thirty.")
    assert reply == "Done: true"
    assert device.volume == 30
    [step] = loop.steps
    assert (step.name, step.arguments, step.result, step.is_error) == ("self.audio_speaker.set_volume", {"volume": 30}, "true", False)
    assert step.seconds >= 0 and step.as_dict()["name"] == "self.audio_speaker.set_volume"
    assert not loop.end_conversation


async def test_what_the_llm_sees_after_a_call():
    seen = []
    llm = FakeLLM()

    async def stream(messages, tools):
        seen.append((list(messages), tools))
        for item in llm.stream(messages, threading.Event(), tools):
            yield item

    device, tools = await device_toolset()
    await collect(ToolLoop(tools, stream), "What is the volume now?")
    assert len(seen) == 2
    messages = seen[1][0]
    assert messages[-2]["role"] == "assistant" and messages[-2]["tool_calls"][0]["function"] == {
        "name": "self_get_device_status", "arguments": "{}"}
    assert messages[-1]["role"] == "tool" and json.loads(messages[-1]["content"]) == {"audio_speaker": {"volume": 50}}
    assert messages[-1]["tool_call_id"] == messages[-2]["tool_calls"][0]["id"]


async def test_plain_questions_need_no_tool_and_the_time_is_said_without_a_second_llm_call():
    calls = []
    llm = FakeLLM(reply="Paris.")

    async def stream(messages, tools):
        calls.append(tools)
        for item in llm.stream(messages, threading.Event(), tools):
            yield item

    device, tools = await device_toolset()
    loop = ToolLoop(tools, stream)
    assert await collect(loop, "What is the capital of France?") == "Paris." and not loop.steps and len(calls) == 1
    calls.clear()
    reply = await collect(loop, "What time is it?")
    assert reply.startswith("It is ") and len(calls) == 1 and loop.steps[0].name == "get_time"


async def test_goodbye_ends_the_conversation():
    device, tools = await device_toolset()
    loop = ToolLoop(tools, fake_stream(FakeLLM()))
    assert await collect(loop, "Goodbye then") == "Goodbye! Talk to you soon."
    assert loop.end_conversation


async def test_tool_steps_are_bounded_and_the_last_round_offers_no_tools():
    offered = []

    async def insistent(messages, tools):
        offered.append(tools is not None)
        if tools:
            yield ToolCall(f"c{len(offered)}", "self_get_device_status", {}).to_wire()
        else:
            yield "Enough."

    device, tools = await device_toolset()
    loop = ToolLoop(tools, insistent, max_steps=2)
    assert await collect(loop, "loop forever") == "Enough."
    assert offered == [True, True, False] and len(loop.steps) == 2


async def test_an_abort_during_a_tool_call_cancels_it_and_its_late_answer_is_ignored():
    device = Device(answer_calls=False)
    await device.client.start()
    tools = Toolset(device.client.tools, [], device_call=device.client.call)
    loop = ToolLoop(tools, fake_stream(FakeLLM()))
    task = asyncio.create_task(collect(loop, "Set the volume to thirty."))
    while device.client.pending_calls == 0:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert device.client.pending_calls == 0
    device.client.handle({"jsonrpc": "2.0", "id": device.sent[-1]["id"], "result": {"content": []}})


async def test_no_tools_means_a_plain_reply():
    loop = ToolLoop(Toolset(), fake_stream(FakeLLM(reply="Hi there.")))
    assert await collect(loop, "Set the volume to thirty.") == "Hi there." and not loop.steps


async def test_through_the_reply_stream_operation_of_the_local_service(settings):
    """The same turn with the LLM behind the real operation seam: tool calls cross it as wire dicts."""
    from voice.conf import service_limits
    from voice.workers.local import LocalService

    settings.XIAOZHI_LLM_PROVIDER = "fake"
    service = LocalService(service_limits("llm"))
    try:
        device, tools = await device_toolset()
        loop = ToolLoop(tools, service_stream(service, "fake", owner="dev-1"))
        assert await collect(loop, "Set the volume to thirty.") == "Done: true"
        assert device.volume == 30 and loop.steps[0].name == "self.audio_speaker.set_volume"
    finally:
        service.shutdown()


def test_tool_calls_round_trip_their_wire_form():
    import msgpack

    call = ToolCall("c1", "self_audio_speaker_set_volume", {"volume": 30})
    assert ToolCall.from_wire(msgpack.unpackb(msgpack.packb(call.to_wire()), raw=False)) == call
    assert ToolCall.from_wire("text") is None and ToolCall.from_wire({"other": 1}) is None
    assert ToolResult.error("x").is_error


def test_a_bad_extra_tools_path_fails_the_system_check(settings):
    from voice.checks import check_voice_settings

    settings.XIAOZHI_EXTRA_TOOLS = ["no.such.tools"]
    assert "voice.E030" in [e.id for e in check_voice_settings()]
    settings.XIAOZHI_EXTRA_TOOLS = ["voice.tests.extra_tools_example"]
    assert "voice.E030" not in [e.id for e in check_voice_settings()]


async def test_a_session_toolset_has_the_device_tools_and_the_server_tools(settings):
    settings.XIAOZHI_EXTRA_TOOLS = []
    device = Device()
    await device.client.start()
    tools = session_toolset(device.client, device_id="aa:bb")
    assert [e.function for e in tools.entries] == ["get_time", "end_conversation", "self_get_device_status",
                                                    "self_audio_speaker_set_volume", "self_screen_set_brightness"]
    assert tools.context.device_id == "aa:bb"
    assert [e.function for e in session_toolset(None).entries] == ["get_time", "end_conversation"]
    settings.XIAOZHI_TOOLS_ENABLED = False
    assert not session_toolset(device.client)
