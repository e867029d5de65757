"""Tools in the conversation, on the scripted timeline (``harness.py``): the real session, MCP
client, tool loop and pacer, with the fake LLM's tool rules and the simulated device's MCP server
(``loadtest.device_tools``). The same turns run over a real WebSocket against a real server
process with the bundled models in ``test_tools_end_to_end.py``."""
import json

from loadtest.device_tools import FirmwareTools
from voice.mcp import CALL_ID_FIRST
from voice.protocol import CloseCode, Mcp
from voice.providers.fake import FakeASR, FakeLLM
from voice.tests.harness import Conversation, dump
from voice.tools.server import FAREWELL


def mcp_sent(c, method=None):
    return [s.message.payload for s in c.sent
            if isinstance(s.message, Mcp) and (method is None or s.message.payload.get("method") == method)]


async def tools_listed(c):
    await c.session.mcp.ready.wait()
    return [t.name for t in c.session.mcp.tools]


async def test_set_the_volume_calls_the_device_tool_and_confirms_it_in_words():
    device = FirmwareTools(volume=70)
    async with Conversation(asr=FakeASR("Set the volume to thirty."), llm=FakeLLM("unused"), tools=True,
                            device_tools=device) as c:
        assert await tools_listed(c) == ["self.get_device_status", "self.audio_speaker.set_volume",
                                         "self.screen.set_brightness"]
        assert [p["params"].get("cursor") for p in mcp_sent(c, "tools/list")] == ["", "self.screen.set_brightness"]
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("tts", "stop")
        [record] = await c.turns_recorded(1)
        [call] = mcp_sent(c, "tools/call")
        assert call["params"] == {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 30}}
        assert call["id"] >= CALL_ID_FIRST and device.volume == 30
        assert c.sentences() == ["Done: true"], dump(c.sent)
        labels = c.labels()
        assert labels.index("mcp") < labels.index("stt") < labels.index("tts:start") < labels.index("tts:sentence_start")
        assert labels[-1] == "tts:stop" and c.count("tts:stop") == 1, dump(c.sent)
        [step] = record.as_row().tool_calls
        assert (step["name"], step["arguments"], step["result"], step["is_error"]) == (
            "self.audio_speaker.set_volume", {"volume": 30}, "true", False)
        assert step["seconds"] >= 0
        assert c.session.mcp.pending_calls == 0 and not c.session.closed


async def test_what_is_the_volume_reads_the_device_status():
    device = FirmwareTools(volume=45)
    async with Conversation(asr=FakeASR("What is the volume now?"), llm=FakeLLM("unused"), tools=True,
                            device_tools=device) as c:
        await tools_listed(c)
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("tts", "stop")
        [record] = await c.turns_recorded(1)
        assert [p["params"]["name"] for p in mcp_sent(c, "tools/call")] == ["self.get_device_status"]
        assert json.loads(record.tool_calls[0].result)["audio_speaker"]["volume"] == 45
        assert '"volume": 45' in record.reply_text


async def test_goodbye_speaks_a_farewell_then_tts_stop_then_closes_normally():
    async with Conversation(asr=FakeASR("Goodbye for now."), llm=FakeLLM("unused"), tools=True,
                            device_tools=FirmwareTools()) as c:
        await tools_listed(c)
        await c.listen("start", "auto")
        c.say(0.3)
        closed = await c.until("close")
        [record] = await c.turns_recorded(1)
        assert closed.message[0] == CloseCode.NORMAL
        labels = c.labels()
        assert labels[-3:] == ["audio", "tts:stop", "close"], dump(c.sent)
        assert " ".join(c.sentences()) == FAREWELL and record.reply_text == FAREWELL
        assert [s.name for s in record.tool_calls] == ["end_conversation"]
        assert c.session.closed and mcp_sent(c, "tools/call") == []  # a server tool: the device is not asked


async def test_a_device_without_mcp_has_no_client_but_the_server_tools_still_answer():
    async with Conversation(asr=FakeASR("What time is it?"), llm=FakeLLM("unused"), tools=True) as c:
        assert c.session.mcp is None
        await c.send(Mcp({"jsonrpc": "2.0", "id": 1, "result": {}}))  # unexpected: counted, ignored
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("tts", "stop")
        [record] = await c.turns_recorded(1)
        assert record.reply_text.startswith("It is ") and [s.name for s in record.tool_calls] == ["get_time"]
        assert mcp_sent(c) == []


async def test_with_tools_off_the_reply_is_the_plain_one_and_the_device_is_still_listed():
    async with Conversation(asr=FakeASR("Set the volume to thirty."), llm=FakeLLM("Plain answer."), tools=False,
                            device_tools=FirmwareTools()) as c:
        await tools_listed(c)
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("tts", "stop")
        [record] = await c.turns_recorded(1)
        assert record.reply_text == "Plain answer." and record.tool_calls == []
        assert mcp_sent(c, "tools/call") == []


async def test_the_agents_llm_model_reaches_the_llm_on_the_tool_path():
    llm = FakeLLM("unused")
    async with Conversation(asr=FakeASR("Set the volume to thirty."), llm=llm, tools=True, llm_model="agent-model",
                            device_tools=FirmwareTools()) as c:
        await tools_listed(c)
        await c.listen("start", "auto")
        c.say(0.3)
        await c.until("tts", "stop")
        assert llm.models == ["agent-model", "agent-model"]  # the call, then the answer after the result


class SilentOnCalls(FirmwareTools):
    """Lists its tools but keeps tool calls waiting; the test answers late."""

    def answer(self, payload):
        replies = super().answer(payload)
        return [] if payload.get("method") == "tools/call" else replies


async def test_abort_during_a_tool_call_stops_once_forgets_the_call_and_ignores_its_late_answer():
    device = SilentOnCalls()
    async with Conversation(asr=FakeASR("Set the volume to thirty."), llm=FakeLLM("unused"), tools=True,
                            device_tools=device) as c:
        await tools_listed(c)
        await c.listen("start", "auto")
        c.say(0.3)
        await c.wire.wait(lambda s: isinstance(s.message, Mcp) and s.message.payload.get("method") == "tools/call", 5)
        assert c.session.mcp.pending_calls == 1
        await c.abort()
        await c.until("tts", "stop")
        [record] = await c.turns_recorded(1)
        assert record.error == "aborted" and c.session.mcp.pending_calls == 0
        [step] = record.as_row().tool_calls
        assert step["name"] == "self.audio_speaker.set_volume" and step["is_error"] and "cancelled" in step["result"]
        [call] = mcp_sent(c, "tools/call")
        seen = len(c.sent)
        await c.send(Mcp({"jsonrpc": "2.0", "id": call["id"],
                          "result": {"content": [{"type": "text", "text": "true"}], "isError": False}}))
        await c.settle()
        assert c.sent[seen:] == [] and c.count("tts:stop") == 1, dump(c.sent)
        assert c.session.state == "listening" and not c.session.closed


async def test_barge_in_during_a_tool_call_cancels_the_turn_and_forgets_the_call():
    device = SilentOnCalls()
    async with Conversation(asr=FakeASR("Set the volume to thirty."), llm=FakeLLM("unused"), tools=True,
                            device_tools=device) as c:
        await tools_listed(c)
        await c.listen("start", "realtime")
        c.say(0.3)
        await c.wire.wait(lambda s: isinstance(s.message, Mcp) and s.message.payload.get("method") == "tools/call", 5)
        c.say(0.3)  # the user speaks over the (silent) reply: barge-in, then a new turn
        stop = await c.until("tts", "stop")
        first = (await c.turns_recorded(1))[0]
        assert first.error == "aborted" and first.as_row().tool_calls[0]["result"].startswith("cancelled")
        second_call = await c.wire.wait(
            lambda s: isinstance(s.message, Mcp) and s.message.payload.get("method") == "tools/call",
            5, since=c.sent.index(stop))
        assert c.session.mcp.pending_calls == 1  # only the new turn's call waits; the first was forgotten
        assert second_call.message.payload["id"] == CALL_ID_FIRST + 1
