"""Device tools over a real WebSocket against a real server process (``python -m xiaozhi.server``,
Daphne with our limits, as ``make run`` starts it), spoken to by the repo's simulated device,
whose MCP server answers as the firmware does (``loadtest.device_tools``).

- the bundled models (the make-run defaults): set the volume, read it back, the time;
- the OpenAI-compatible provider against the local fake of the API that asks for tool calls (the
  remote boundary is the only fake);
- every MCP edge case a device can produce, and abort during a tool call.

What the server did is read where it keeps it: the MCP messages the device received, the speech
it heard, and the turn rows the server wrote to its own database (``Turn.tool_calls``).
"""
import asyncio
import json
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from loadtest.device_tools import FirmwareTools
from loadtest.simulated_device import SimulatedDevice
from voice.mcp import CALL_ID_FIRST
from voice.protocol import Mcp, Tts
from voice.tests.fake_openai_server import FakeOpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.models]

CALL_TIMEOUT = 3  # XIAOZHI_PERF__MCP__CALL_TIMEOUT of the server: a device that never answers
SET_VOLUME = "self.audio_speaker.set_volume"
STATUS = "self.get_device_status"


@pytest.fixture(scope="module")
def tools_server(start_server, tmp_path_factory):
    """``with tools_server(name, **env) as (server, db):`` the production server (conftest's
    ``start_server``) on a SQLite database of its own, whatever the run's DATABASE_URL, so the test
    reads back with sqlite3 exactly the turns this server wrote."""

    @contextmanager
    def start(name: str, **env):
        db = tmp_path_factory.mktemp(f"{name}-db") / "db.sqlite3"
        with start_server(name, DATABASE_URL="", SQLITE_PATH=db, XIAOZHI_RATE_LIMIT_EXEMPT="127.0.0.1", **env) as server:
            yield server.base, db

    return start


@pytest.fixture(scope="module")
def bundled(tools_server):
    with tools_server("tools-bundled", XIAOZHI_PERF__MCP__CALL_TIMEOUT=CALL_TIMEOUT,
                      XIAOZHI_PERF__MCP__MAX_PENDING_CALLS=1) as server:
        yield server


@pytest.fixture(scope="module")
def fake_api():
    api = FakeOpenAIServer().start()
    api.tool_rules = {"set the volume": ("self_audio_speaker_set_volume", {"volume": 30}),
                      "what time": ("get_time", {})}
    api.tool_reply = "Okay, the volume is now thirty."
    api.reply = ["I can help", " with that."]
    api.chunk_delay = 0.0
    yield api
    api.stop()


@pytest.fixture(scope="module")
def remote_llm(tools_server, fake_api):
    with tools_server("tools-openai", XIAOZHI_LLM_PROVIDER="openai", XIAOZHI_LLM_BASE_URL=fake_api.url,
                      XIAOZHI_LLM_MODEL="hosted-model") as server:
        yield server


async def connected(server, tools=None) -> SimulatedDevice:
    base = server[0]
    device = SimulatedDevice()
    if tools is not None:
        device.tools = tools
    await device.ota(f"{base}/xiaozhi/ota/")
    assert await device.connect() is not None
    return device


async def tools_listed(device, pages: int) -> None:
    """The server has asked for every page it will ask for (the device answers at once)."""
    await device.wait_for(lambda e: len(device.mcp_requests("tools/list")) >= pages, 10)
    await asyncio.sleep(0.3)  # the last page's answer travels back


def turn_rows(db: Path, device: SimulatedDevice, count: int, timeout: float = 15) -> list[dict]:
    """The turns the server stored for this device, oldest first, once there are ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute(
                "SELECT t.* FROM devices_turn t JOIN devices_device d ON d.id = t.device_id "
                "WHERE d.device_id = ? ORDER BY t.id", (device.device_id,))]
        if len(rows) >= count or time.monotonic() > deadline:
            for row in rows:
                row["tool_calls"] = json.loads(row["tool_calls"])
            return rows
        time.sleep(0.2)


def index_of(result, predicate) -> int:
    return next(i for i, e in enumerate(result.events) if predicate(e))


def is_call(e) -> bool:
    return isinstance(e.message, Mcp) and e.message.payload.get("method") == "tools/call"


def spoken(e) -> bool:
    return isinstance(e.message, Tts) and e.message.state == "sentence_start"


# --- 1. the bundled models ------------------------------------------------------------------------------


async def test_set_the_volume_read_it_back_and_ask_the_time_on_the_bundled_models(bundled, say):
    from django.conf import settings

    device = await connected(bundled)
    try:
        await tools_listed(device, 2)
        assert [p["params"]["cursor"] for p in device.mcp_requests("tools/list")] == ["", "self.screen.set_brightness"]

        result = await device.turn(say("Set the volume to thirty."), mode="manual", timeout=60)
        [call] = device.mcp_requests("tools/call")
        assert call["params"] == {"name": SET_VOLUME, "arguments": {"volume": 30}}
        assert isinstance(call["id"], int) and call["id"] >= CALL_ID_FIRST
        assert device.tools.volume == 30
        assert index_of(result, is_call) < index_of(result, spoken)  # the call first, then the words
        assert result.sentences and result.audio and result.stopped
        assert "30" in " ".join(result.sentences) or "thirty" in " ".join(result.sentences).lower()

        result = await device.turn(say("What is the volume now?"), mode="manual", timeout=60)
        assert [c["params"]["name"] for c in device.mcp_requests("tools/call")] == [SET_VOLUME, STATUS]
        answer = " ".join(result.sentences)
        assert result.stopped and ("30" in answer or "thirty" in answer.lower()), answer

        zone = ZoneInfo(settings.XIAOZHI_TIME_ZONE)
        before = datetime.now(zone)
        result = await device.turn(say("What time is it?"), mode="manual", timeout=60)
        after = datetime.now(zone)
        answer = " ".join(result.sentences)
        assert result.stopped and (f"{before:%H}:" in answer or f"{after:%H}:" in answer), answer
        assert len(device.mcp_requests("tools/call")) == 2  # the time is the server's own tool

        rows = turn_rows(bundled[1], device, 3)
        assert [[c["name"] for c in r["tool_calls"]] for r in rows] == [[SET_VOLUME], [STATUS], ["get_time"]]
        first = rows[0]["tool_calls"][0]
        assert (first["arguments"], first["result"], first["is_error"]) == ({"volume": 30}, "true", False)
        assert json.loads(rows[1]["tool_calls"][0]["result"])["audio_speaker"]["volume"] == 30
    finally:
        await device.close()


async def test_a_plain_question_calls_no_tool(bundled, say):
    device = await connected(bundled)
    try:
        await tools_listed(device, 2)
        result = await device.turn(say("What is the capital of France?"), mode="manual", timeout=60)
        assert result.sentences and result.stopped
        assert device.mcp_requests("tools/call") == []
        [row] = turn_rows(bundled[1], device, 1)
        assert row["tool_calls"] == []
    finally:
        await device.close()


# --- 2. the OpenAI-compatible provider ----------------------------------------------------------------


async def test_the_same_through_the_openai_provider_against_a_fake_of_the_api(remote_llm, fake_api, say):
    device = await connected(remote_llm)
    try:
        await tools_listed(device, 2)
        result = await device.turn(say("Set the volume to thirty."), mode="manual", timeout=60)
        [call] = device.mcp_requests("tools/call")
        assert call["params"] == {"name": SET_VOLUME, "arguments": {"volume": 30}}
        assert result.sentences == ["Okay, the volume is now thirty."] and result.stopped
        chats = [r.fields for r in fake_api.of("/v1/chat/completions")]
        first, second = chats[-2:]
        offered = {t["function"]["name"] for t in first["tools"]}
        assert {"self_audio_speaker_set_volume", "self_get_device_status", "get_time"} <= offered
        assert first["model"] == "hosted-model"
        # The result went back to the model with the call it answers, as the API expects.
        assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "self_audio_speaker_set_volume"
        assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "true"}

        result = await device.turn(say("What time is it?"), mode="manual", timeout=60)
        assert result.stopped and result.sentences[0].startswith("It is")
        rows = turn_rows(remote_llm[1], device, 2)
        assert [[c["name"] for c in r["tool_calls"]] for r in rows] == [[SET_VOLUME], ["get_time"]]
    finally:
        await device.close()


# --- 3. what a device may do wrong ----------------------------------------------------------------------


class Scripted(FirmwareTools):
    """The firmware's answers, except for tools/call, which follows ``on_call``: "answer" (as the
    firmware), "error" (an error without code), "junk" (unknown, non-numeric ids, a notification
    and a request first, then the answer), "silent" (never answers; the test may answer later)."""

    def __init__(self, on_call="answer", pad_page: int | None = None, **options):
        super().__init__(**options)
        self.on_call = on_call
        self.pad_page = pad_page  # this tools/list page (0-based) grows past the server's page limit
        self.pages = 0

    def answer(self, payload):
        method = payload.get("method") if isinstance(payload, dict) else None
        if method == "tools/call" and self.on_call in ("silent", "error"):
            self.requests.append(dict(payload))  # not run; not answered, or refused
            if self.on_call == "error":
                return [{"jsonrpc": "2.0", "id": payload["id"], "error": {"message": "Volume is locked by the parent"}}]
            return []
        replies = super().answer(payload)
        if method == "tools/list":
            if self.pages == self.pad_page:
                replies[0]["result"]["tools"][0] = {**replies[0]["result"]["tools"][0], "description": "x" * 20000}
            self.pages += 1
        if method != "tools/call":
            return replies
        msg_id = payload["id"]
        if self.on_call == "junk":
            return [{"jsonrpc": "2.0", "id": msg_id + 777, "result": {"content": [{"type": "text", "text": "no"}]}},
                    {"jsonrpc": "2.0", "id": str(msg_id), "result": {"content": [{"type": "text", "text": "no"}]}},
                    {"jsonrpc": "2.0", "method": "notifications/state_changed", "params": {"newState": "idle"}},
                    {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}},
                    "not an object",
                    *replies]
        return replies


async def volume_turn(server, say, tools, **turn):
    device = await connected(server, tools)
    await tools_listed(device, turn.pop("pages", 2))
    result = await device.turn(say("Set the volume to thirty."), mode="manual", timeout=60, **turn)
    return device, result


async def test_an_error_without_code_is_a_failed_call_the_reply_still_ends(bundled, say):
    device, result = await volume_turn(bundled, say, Scripted("error"))
    try:
        assert len(device.mcp_requests("tools/call")) == 1 and result.stopped and result.sentences
        assert device.tools.volume == 70
        [row] = turn_rows(bundled[1], device, 1)
        [call] = row["tool_calls"]
        assert call["is_error"] and call["result"] == "error: Volume is locked by the parent"
        assert device.close_code is None  # the session goes on
    finally:
        await device.close()


async def test_unknown_ids_non_numeric_ids_notifications_requests_and_garbage_are_ignored(bundled, say):
    device, result = await volume_turn(bundled, say, Scripted("junk"))
    try:
        assert result.stopped and result.sentences and device.tools.volume == 30
        [row] = turn_rows(bundled[1], device, 1)
        [call] = row["tool_calls"]
        assert (call["result"], call["is_error"]) == ("true", False)  # the real answer, matched by its id
        assert device.close_code is None
    finally:
        await device.close()


async def test_a_device_that_never_answers_a_call_gets_a_timeout_and_the_reply_ends(bundled, say):
    device, result = await volume_turn(bundled, say, Scripted("silent"))
    try:
        assert result.stopped and result.sentences and device.tools.volume == 70
        [row] = turn_rows(bundled[1], device, 1)
        [call] = row["tool_calls"]
        assert call["is_error"] and call["result"] == f"error: the device did not answer within {CALL_TIMEOUT} s"
        assert call["seconds"] >= CALL_TIMEOUT
        # The forgotten call does not hold the device's only call slot (max_pending_calls = 1).
        device.tools.on_call = "answer"
        result = await device.turn(say("Set the volume to thirty."), mode="manual", timeout=60)
        assert result.stopped and device.tools.volume == 30
        assert turn_rows(bundled[1], device, 2)[1]["tool_calls"][0]["result"] == "true"
    finally:
        await device.close()


async def test_a_device_that_disconnects_mid_call_ends_its_turn_and_can_come_back(bundled, say):
    tools = Scripted("silent")
    device = await connected(bundled, tools)
    await tools_listed(device, 2)
    await device.listen("start", "manual")
    await device.stream(say("Set the volume to thirty."))
    await device.listen("stop")
    await device.wait_for(is_call, 30)
    await device.close()
    [row] = turn_rows(bundled[1], device, 1)
    assert row["error"] == "aborted"
    [call] = row["tool_calls"]
    # The socket's end fails the call at once (McpClient.close), before the turn is cancelled.
    assert (call["name"], call["is_error"], call["result"]) == (SET_VOLUME, True, "error: the device disconnected during the call")
    again = SimulatedDevice(device.device_id, device.client_id)
    again.tools = FirmwareTools()
    await again.ota(f"{bundled[0]}/xiaozhi/ota/")
    await again.connect()
    try:
        await tools_listed(again, 2)
        result = await again.turn(say("Set the volume to thirty."), mode="manual", timeout=60)
        assert result.stopped and again.tools.volume == 30
    finally:
        await again.close()


async def test_tools_list_is_followed_page_by_page(bundled, say):
    device, result = await volume_turn(bundled, say, Scripted("answer", page_size=1), pages=3)
    try:
        assert [p["params"]["cursor"] for p in device.mcp_requests("tools/list")] == [
            "", SET_VOLUME, "self.screen.set_brightness"]
        assert [p["id"] for p in device.mcp_requests("tools/list")] == [2, 3, 4]
        assert device.mcp_requests("initialize")[0]["id"] == 1
        assert device.tools.calls == [(SET_VOLUME, {"volume": 30})]  # a tool of the second page
        assert result.stopped
    finally:
        await device.close()


async def test_an_oversized_tools_list_page_ends_the_listing_there(bundled, say):
    # Page 2 (set_volume) is larger than mcp.max_page_bytes: the server keeps page 1 and stops asking.
    device, result = await volume_turn(bundled, say, Scripted("answer", page_size=1, pad_page=1), pages=2)
    try:
        await asyncio.sleep(0.5)
        assert len(device.mcp_requests("tools/list")) == 2
        assert SET_VOLUME not in [name for name, _ in device.tools.calls]  # unknown to the server
        assert result.stopped and result.sentences and device.tools.volume == 70
    finally:
        await device.close()


async def test_abort_during_a_tool_call_stops_once_and_ignores_the_late_answer(bundled, say):
    tools = Scripted("silent")
    device = await connected(bundled, tools)
    try:
        await tools_listed(device, 2)
        start = len(device.events)
        await device.listen("start", "manual")
        await device.stream(say("Set the volume to thirty."))
        await device.listen("stop")
        call = (await device.wait_for(is_call, 30, since=start)).message.payload
        await device.abort("wake word")
        await device.wait_for(lambda e: isinstance(e.message, Tts) and e.message.state == "stop", 10, since=start)
        # The late answer: ignored (not taken for anything, nothing more is said).
        await device.send_mcp({"jsonrpc": "2.0", "id": call["id"],
                               "result": {"content": [{"type": "text", "text": "true"}], "isError": False}})
        await asyncio.sleep(1.5)
        after = device.events[start:]
        assert sum(isinstance(e.message, Tts) and e.message.state == "stop" for e in after) == 1
        assert not any(spoken(e) or e.kind == "audio" for e in after)
        [row] = turn_rows(bundled[1], device, 1)
        assert row["error"] == "aborted" and row["tool_calls"][0]["result"].startswith("cancelled")
        # No pending call leaked: with max_pending_calls = 1 the next call still goes out and succeeds.
        tools.on_call = "answer"
        result = await device.turn(say("Set the volume to thirty."), mode="manual", timeout=60)
        assert result.stopped and tools.volume == 30 and device.close_code is None
        assert turn_rows(bundled[1], device, 2)[1]["tool_calls"][0]["result"] == "true"
    finally:
        await device.close()
