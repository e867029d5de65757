"""The camera tool in a conversation, the whole way: a device with a camera says "What do you see?"
over a real WebSocket to a real server process (``python -m xiaozhi.server``); the server asks the
device to take a photo (MCP ``tools/call self.camera.take_photo``); the device uploads a real JPEG
over real HTTP to the vision URL the server gave it in MCP ``initialize``; the server asks the vision
provider (``openai``, pointed at a local fake of the remote API: the only fake at a boundary we do
not own besides the scripted LLM and TTS) and answers the upload; the device returns that answer
as the tool's result, and the reply it hears carries it. Speech recognition is the bundled Whisper,
so what the device says is heard as a board's words are.
"""
import asyncio
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtest.camera import NO_VISION
from loadtest.fake_vision import FakeVisionServer, answer_for
from loadtest.simulated_device import SimulatedDevice
from voice.protocol import Mcp, Tts

pytestmark = [pytest.mark.e2e, pytest.mark.models]

TAKE_PHOTO = "self.camera.take_photo"


@pytest.fixture(scope="module")
def fake_vision():
    with FakeVisionServer() as server:
        yield server


@pytest.fixture(scope="module")
def camera_server(start_server, tmp_path_factory):
    """``with camera_server(name, **env) as (base, db):`` the production server on a SQLite of its
    own (read back here with sqlite3), the scripted LLM and TTS, the given overrides."""

    @contextmanager
    def start(name: str, **env):
        db = tmp_path_factory.mktemp(f"{name}-db") / "db.sqlite3"
        env = {"XIAOZHI_LLM_PROVIDER": "fake", "XIAOZHI_TTS_PROVIDER": "fake", "XIAOZHI_ACTIVATION_REQUIRED": "0",
               "XIAOZHI_WEBSOCKET_URL": "", "XIAOZHI_VISION_URL": "", "XIAOZHI_VLLM_PROVIDER": "", **env}
        with start_server(name, DATABASE_URL="", SQLITE_PATH=db, XIAOZHI_RATE_LIMIT_EXEMPT="127.0.0.1", **env) as server:
            yield server.base, db

    return start


@pytest.fixture(scope="module")
def with_vision(camera_server, fake_vision):
    with camera_server("camera-vision", XIAOZHI_VLLM_PROVIDER="openai", XIAOZHI_VLLM_BASE_URL=fake_vision.url,
                       XIAOZHI_VLLM_MODEL="fake-vision") as server:
        yield server


async def with_camera(base: str) -> SimulatedDevice:
    device = SimulatedDevice(camera=True)
    await device.ota(f"{base}/xiaozhi/ota/")
    assert await device.connect() is not None
    # Every tools/list page asked for: the server knows the camera tool (the last page) from here on.
    await device.wait_for(lambda e: len(device.mcp_requests("tools/list")) >= 2, 10)
    await asyncio.sleep(0.3)  # the last page's answer travels back
    return device


def vision_rows(db: Path, device: SimulatedDevice, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute(
                "SELECT q.*, s.session_id AS session_uuid FROM devices_visionquery q "
                "JOIN devices_device d ON d.id = q.device_id LEFT JOIN devices_devicesession s ON s.id = q.session_id "
                "WHERE d.device_id = ? ORDER BY q.id", (device.device_id,))]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def initialize_vision(device: SimulatedDevice):
    [initialize] = device.mcp_requests("initialize")
    return initialize["params"]["capabilities"].get("vision")


async def test_what_do_you_see_takes_a_photo_uploads_it_and_speaks_the_vision_answer(with_vision, fake_vision, say):
    base, db = with_vision
    device = await with_camera(base)
    try:
        vision = initialize_vision(device)
        assert vision["url"] == f"{base}/xiaozhi/vision/"  # from the Host header: no URL is configured
        assert vision["token"] and device.tools.camera.vision == vision

        result = await device.turn(say("What do you see?"), mode="manual", timeout=90)
        [call] = device.mcp_requests("tools/call")
        assert call["params"] == {"name": TAKE_PHOTO, "arguments": {"question": "What do you see?"}}
        # The photo reached the vision provider, a real JPEG as the device's camera made it.
        [seen] = [s for s in fake_vision.seen if s.question == "What do you see?"]
        assert (seen.image_type, seen.image_bytes, seen.model) == ("image/jpeg", len(device.tools.camera.jpeg), "fake-vision")
        answer = answer_for(seen)
        assert device.tools.camera.answers == [answer]  # what the upload was told, returned as the tool result

        spoken = " ".join(result.sentences)
        assert spoken.startswith("Done:") and "red square on a blue sky" in spoken, spoken
        assert f"{seen.image_bytes} bytes" in spoken, spoken
        assert result.stopped
        events = result.events
        call_at = next(i for i, e in enumerate(events) if isinstance(e.message, Mcp)
                       and e.message.payload.get("method") == "tools/call")
        first_words = next(i for i, e in enumerate(events) if isinstance(e.message, Tts) and e.message.state == "sentence_start")
        assert call_at < first_words

        [row] = vision_rows(db, device)
        assert (row["question"], row["answer"], row["error"]) == ("What do you see?", answer, "")
        assert (row["image_bytes"], row["image_type"], row["provider"]) == (len(device.tools.camera.jpeg), "image/jpeg", "openai")
        assert uuid.UUID(row["session_uuid"]) == uuid.UUID(device.server_hello.session_id)  # the photo belongs to this conversation
        assert device.close_code is None
    finally:
        await device.close()


async def test_without_a_vision_provider_initialize_offers_no_vision(camera_server):
    with camera_server("camera-none", XIAOZHI_ASR_PROVIDER="fake", XIAOZHI_PRELOAD_MODELS="0") as (base, _db):
        device = await with_camera(base)
        try:
            assert initialize_vision(device) is None
            assert device.tools.camera.vision is None  # its camera tool would answer NO_VISION by itself
            reply = await device.tools.camera.answer({"id": 9, "params": {"arguments": {"question": "What do you see?"}}})
            assert reply["error"]["message"] == NO_VISION
        finally:
            await device.close()
