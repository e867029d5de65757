"""The bundled SmolLM2's tool decision (grammar-constrained router) on the real model, and the
pure parts of the router (prompt, grammar, parsing) without it."""
import json
import threading

import pytest

from voice.providers.llm.tool_router import aliases, generic_example, parse_decision, router_grammar, router_messages
from voice.mcp.firmware import FIRMWARE_TOOLS
from voice.tools.model import Tool
from voice.tools.server import server_tools
from voice.tools.toolset import Toolset

DEVICE_TOOLS = [Tool(t["name"], t["description"], t["inputSchema"]) for t in FIRMWARE_TOOLS]


def specs():
    return Toolset(DEVICE_TOOLS, server_tools("UTC", [])).specs()


def test_the_router_shows_short_names_and_maps_them_back():
    names = aliases(specs())
    assert names["set_volume"] == "self_audio_speaker_set_volume" and names["get_time"] == "get_time"
    assert parse_decision('{"tool":"set_volume","arguments":{"volume":30}}', names) == ("self_audio_speaker_set_volume", {"volume": 30})
    assert parse_decision('{"tool":"none"}', names) is None and parse_decision('{"tool":"set_vol', names) is None


def test_the_prompt_has_examples_of_both_kinds():
    messages = router_messages(specs())
    answers = [json.loads(m["content"]) for m in messages if m["role"] == "assistant"]
    assert {"tool": "none"} in answers
    assert {"tool": "set_volume", "arguments": {"volume": 40}} in answers
    assert "set_volume(volume)" in messages[0]["content"]
    assert generic_example("self_light_set_color", {"properties": {"color": {"type": "string"}}}) == (
        "Light set color something.", {"color": "something"})


def test_the_grammar_parses():
    from llama_cpp import LlamaGrammar

    text = router_grammar(specs())
    assert text.startswith('root ::= "none\\"}" | ')
    LlamaGrammar.from_string(text, verbose=False)


@pytest.mark.models
def test_set_the_volume_to_thirty_calls_set_volume_with_30():
    from voice.providers.llm.smollm2 import SmolLM2LLM

    llm = SmolLM2LLM()
    try:
        llm.prefill_tools(specs())  # what the session does once the device's tools are known
        [call] = list(llm.stream([{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Set the volume to thirty."}], threading.Event(), specs()))
        assert (call.name, call.arguments) == ("self_audio_speaker_set_volume", {"volume": 30})
        reply = "".join(llm.stream([{"role": "user", "content": "Set the volume to thirty."},
                                    {"role": "assistant", "content": None, "tool_calls": [call.as_message()]},
                                    {"role": "tool", "tool_call_id": call.id, "content": "true"}], threading.Event(), specs()))
        assert reply == "Okay, the volume is now 30."
        plain = list(llm.stream([{"role": "user", "content": "What is the capital of France?"}], threading.Event(), specs()))
        assert plain and all(isinstance(item, str) for item in plain)  # the router said none: words, no call
    finally:
        llm.close()


def test_only_tools_the_words_touch_are_candidates():
    from voice.providers.llm.tool_router import candidates

    def names(text):
        return [s["function"]["name"] for s in candidates(text, specs())]

    assert "self_audio_speaker_set_volume" in names("Set the volume to thirty.")
    assert "self_screen_set_brightness" in names("Make the screen brighter")
    assert "self_screen_set_brightness" not in names("Set the volume to thirty.")
    assert names("What is the capital of France?") == [] and names("What is two plus two?") == []
    assert "get_time" in names("What's the date?")
    # The grammar then allows only those (and none).
    grammar = router_grammar(specs(), ["get_time"])
    assert "set_volume" not in grammar and '"get_time"' in grammar.replace("\\", "")


def tool_round(arguments: str, result: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Set the volume to thirty."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "self_audio_speaker_set_volume", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c1", "content": result}]


def test_a_trivial_result_is_confirmed_from_the_arguments():
    from voice.providers.llm.smollm2 import confirm_tool_round

    assert confirm_tool_round(tool_round('{"volume": 30}', "true")) == "Okay, the volume is now 30."
    assert confirm_tool_round(tool_round("{}", "true")) == "Okay, done."
    assert confirm_tool_round(tool_round('{"volume": 30}', "error: Missing valid argument: volume")) is None
    assert confirm_tool_round([{"role": "user", "content": "hi"}]) is None


def test_a_tool_round_becomes_a_note_the_small_model_can_read():
    from voice.providers.llm.smollm2 import plain_messages

    messages = plain_messages(tool_round("{}", json.dumps({"audio_speaker": {"volume": 30}, "battery": {"level": 90}})))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == ("Set the volume to thirty.\n(Tool set_volume() returned: audio_speaker volume: 30; "
                                      "battery level: 90. Tell me the result in one short sentence.)")
    assert all(isinstance(m["content"], str) for m in messages)


def test_number_words_become_digits_for_the_router():
    from voice.providers.llm.tool_router import digits

    assert digits("Set the volume to thirty.") == "Set the volume to 30."
    assert digits("Put the volume at seventy five, or Seventy-Five, or a hundred") == "Put the volume at 75, or 75, or 100"
    assert digits("one, twelve, zero, ninety") == "1, 12, 0, 90"
    assert digits("someone often listens") == "someone often listens"  # whole words only


@pytest.mark.models
async def test_a_whole_tool_turn_on_the_bundled_model():
    """The loop with the real model and a scripted device: the call, then an answer from its result."""
    from voice.pipeline.tool_loop import ToolLoop
    from voice.providers.llm.smollm2 import SmolLM2LLM
    from voice.tests.test_mcp import Device

    llm = SmolLM2LLM()
    device = Device()
    await device.client.start()
    tools = Toolset(device.client.tools, server_tools("UTC", []), device_call=device.client.call)

    async def stream(messages, offered):
        for item in llm.stream(messages, threading.Event(), offered):
            yield item

    async def ask(text):
        loop = ToolLoop(tools, stream)
        reply = "".join([d async for d in loop.reply([{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": text}])])
        return reply, [(s.name, s.arguments) for s in loop.steps]

    try:
        assert await ask("Set the volume to thirty.") == ("Okay, the volume is now 30.",
                                                           [("self.audio_speaker.set_volume", {"volume": 30})])
        assert device.volume == 30
        reply, steps = await ask("What is the volume now?")
        assert steps == [("self.get_device_status", {})] and "30" in reply
        reply, steps = await ask("What time is it?")
        assert steps == [("get_time", {})] and reply.startswith("It is ")
    finally:
        llm.close()


@pytest.mark.models
def test_start_up_prepares_the_tool_decision_for_a_stock_device():
    """What a stock device's session offers (its tools as the MCP client reads them from the
    simulated firmware, and the server's) is already evaluated on the router once the server has
    warmed the model, so the first sessions after a start do not wait seconds for it."""
    from loadtest.device_tools import FirmwareTools
    from voice.mcp.client import tool_from_mcp
    from voice.providers.llm.smollm2 import SmolLM2LLM
    from voice.providers.llm.tool_router import chatml_prompt
    from voice.providers.registry import _prepare_stock_tools

    llm = SmolLM2LLM()
    try:
        _prepare_stock_tools(llm)
        session = Toolset([tool_from_mcp(t) for t in FirmwareTools().tools], server_tools()).specs()
        [router] = llm._router_pool().instances
        prefix = router.tokenize(chatml_prompt(router_messages(session)).encode(), special=True)
        evaluated = list(router._input_ids)
        assert len(prefix) > 500 and evaluated[:len(prefix) - 8] == prefix[:len(prefix) - 8]
    finally:
        llm.close()
