"""The camera tool's upload as a device makes it: a real JPEG, posted chunked, through the real
server process (``python -m xiaozhi.server``: Daphne with our transport limits) to a local
OpenAI-compatible vision server (the remote boundary), and ten devices at once against
``services.vllm.max_concurrent`` 2."""
import asyncio
import os
import sqlite3

import httpx
import pytest

from devices.vision import issue_vision_token, vision_capability
from devices.vision_views import BUSY
from loadtest.camera import NO_VISION, Camera, PhotoRefused, photo_jpeg, upload_photo
from loadtest.fake_vision import FakeVisionServer, answer_for
from loadtest.server import ServerDidNotStart, server_process

pytestmark = pytest.mark.e2e

SECRET = "vision-e2e-secret"
MONITORING = "vision-e2e-monitoring-token"
MAX_CONCURRENT, QUEUE_SIZE, MAX_IMAGE = 2, 3, 100_000
JPEG = photo_jpeg()


@pytest.fixture(scope="module")
def fake_vision():
    with FakeVisionServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake_vision):
    """The production server on a free port, its own SQLite (read back with sqlite3), vision on, no models loaded."""
    db = tmp_path_factory.mktemp("vision") / "db.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("XIAOZHI_")}
    env.update(SQLITE_PATH=str(db), XIAOZHI_DATA_DIR=str(tmp_path_factory.mktemp("data")),
               XIAOZHI_PRELOAD_MODELS="0", XIAOZHI_MONITORING_SCHEDULER="off", XIAOZHI_WORKER_BACKEND="local",
               XIAOZHI_MONITORING_REDIS_PREFIX=f"xiaozhi:vision-test-{os.getpid()}:",
               XIAOZHI_AUTH_SECRET=SECRET, XIAOZHI_ACTIVATION_REQUIRED="0", XIAOZHI_MONITORING_API_TOKEN=MONITORING,
               XIAOZHI_RATE_LIMIT_EXEMPT="127.0.0.1/32",  # one address plays ten devices
               XIAOZHI_VLLM_PROVIDER="openai", XIAOZHI_VLLM_BASE_URL=fake_vision.url, XIAOZHI_VLLM_MODEL="fake-vision",
               XIAOZHI_VISION_MAX_IMAGE_BYTES=str(MAX_IMAGE),
               XIAOZHI_PERF__SERVICES__VLLM__MAX_CONCURRENT=str(MAX_CONCURRENT),
               XIAOZHI_PERF__SERVICES__VLLM__QUEUE_SIZE=str(QUEUE_SIZE))
    try:
        with server_process(env, tmp_path_factory.mktemp("logs") / "server.log", startup_timeout=60) as running:
            yield {"url": running.base, "db": db}
    except ServerDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture(autouse=True)
def same_secret(settings):
    settings.XIAOZHI_AUTH_SECRET = SECRET  # tokens made here are the server's


def boot(server, device_id: str, client_id: str) -> None:
    """The device's first call at boot: the OTA endpoint, which registers it."""
    response = httpx.post(f"{server['url']}/xiaozhi/ota/", json={"application": {"version": "1.7.0"}},
                          headers={"Device-Id": device_id, "Client-Id": client_id}, timeout=10)
    assert response.status_code == 200


def concurrency(server):
    return httpx.get(f"{server['url']}/api/performance/concurrency/", timeout=10,
                     headers={"Authorization": f"Bearer {MONITORING}"})


def rows(server, device_prefix: str) -> list[tuple]:
    with sqlite3.connect(server["db"]) as db:
        return db.execute(
            "SELECT d.device_id, q.question, q.answer, q.error, q.image_bytes, q.image_type, q.seconds "
            "FROM devices_visionquery q JOIN devices_device d ON d.id = q.device_id "
            "WHERE d.device_id LIKE ? ORDER BY q.asked_at, q.id", (device_prefix + "%",)).fetchall()


async def ask(server, device_id, client_id, question, jpeg=JPEG, token=None):
    token = issue_vision_token(client_id, device_id) if token is None else token
    return await upload_photo(f"{server['url']}/xiaozhi/vision/", token, device_id, client_id, question, jpeg, timeout=60)


async def test_a_real_jpeg_posted_chunked_is_answered_by_the_vision_provider_and_recorded(server, fake_vision):
    device_id, client_id = "aa:bb:cc:10:00:01", "board-uuid-1"
    boot(server, device_id, client_id)
    answer = await ask(server, device_id, client_id, "What do you see?")
    seen = next(s for s in fake_vision.seen if s.question == "What do you see?")
    assert (seen.image_type, seen.image_bytes, seen.model) == ("image/jpeg", len(JPEG), "fake-vision")
    assert answer == answer_for(seen)
    [(_, question, stored, error, size, kind, seconds)] = rows(server, device_id)
    assert (question, stored, error, size, kind) == ("What do you see?", answer, "", len(JPEG), "image/jpeg")
    assert seconds >= 0


async def test_refusals_reach_the_device_as_the_status_its_camera_tool_reports(server, fake_vision):
    device_id, client_id = "aa:bb:cc:10:00:02", "board-uuid-2"
    boot(server, device_id, client_id)
    before = len(fake_vision.seen)
    cases = [
        ({"token": ""}, 401), ({"token": issue_vision_token(client_id, "aa:bb:cc:10:00:99")}, 401),
        ({"jpeg": b"this is not a photo"}, 415),
        ({"jpeg": JPEG[:4] + bytes(MAX_IMAGE + 1)}, 413),  # JPEG magic, over the size limit
    ]
    for kwargs, status in cases:
        with pytest.raises(PhotoRefused) as refused:
            await ask(server, device_id, client_id, "What is this?", **kwargs)
        assert refused.value.status == status, kwargs.keys()
        assert str(refused.value) == f"Failed to upload photo, status code: {status}"
    with pytest.raises(PhotoRefused) as refused:
        await ask(server, device_id, client_id, "   ")
    assert refused.value.status == 400 and "question" in refused.value.text
    assert len(fake_vision.seen) == before and rows(server, device_id) == []


async def test_ten_devices_at_once_with_two_slots_are_answered_or_told_busy_in_arrival_order(server, fake_vision):
    """2 slots + 3 queued: while the vision server holds the first two, the next three wait and the
    last five hear "busy" at once; once it answers, the five are answered in the order the queue
    took them (two slots may finish a pair in either order), and nothing is left hanging."""
    devices = [(f"aa:bb:cc:20:00:{i:02x}", f"load-uuid-{i}") for i in range(10)]
    for device_id, client_id in devices:
        boot(server, device_id, client_id)
    stats = concurrency(server).json()["services"].get("vllm", {})
    start_completed, start_rejected = stats.get("completed", 0), stats.get("rejected", 0)
    fake_vision.hold()
    try:
        tasks = [asyncio.ensure_future(ask(server, d, c, f"What do you see, device {i}?"))
                 for i, (d, c) in enumerate(devices)]
        async with asyncio.timeout(60):  # busy answers come at once; the held five wait for release()
            while sum(t.done() for t in tasks) < 10 - MAX_CONCURRENT - QUEUE_SIZE or fake_vision.in_flight < MAX_CONCURRENT:
                await asyncio.sleep(0.05)
        busy_now = [t.result() for t in tasks if t.done()]
        assert busy_now == [BUSY] * (10 - MAX_CONCURRENT - QUEUE_SIZE)
    finally:
        fake_vision.release()
    async with asyncio.timeout(60):
        answers = await asyncio.gather(*tasks)
    answered = [a for a in answers if a != BUSY]
    assert len(answered) == MAX_CONCURRENT + QUEUE_SIZE and answers.count(BUSY) == 10 - len(answered)

    recorded = rows(server, "aa:bb:cc:20:")
    assert len(recorded) == 10
    # In the queue's order (asked_at): the first five were served, the rest refused as busy.
    assert [r[3].split(":")[0] for r in recorded] == [""] * 5 + ["busy"] * 5
    queue_order = [r[1] for r in recorded[:5]]
    served_order = [s.question for s in fake_vision.seen if s.question in queue_order]
    assert sorted(served_order) == sorted(queue_order)
    for position, question in enumerate(served_order):  # FIFO with two slots: off by at most one
        assert abs(queue_order.index(question) - position) <= MAX_CONCURRENT - 1, (queue_order, served_order)

    stats = concurrency(server).json()["services"]["vllm"]
    assert stats["completed"] - start_completed == 5 and stats["rejected"] - start_rejected == 5
    assert stats["active"] == 0 and stats["queued"] == 0


async def test_a_simulated_devices_camera_tool_answers_with_the_servers_text(server, fake_vision, settings):
    """The hook for the MCP path: initialize carries vision_capability(), the camera remembers it,
    and a tools/call of take_photo uploads the real JPEG and returns the answer as the tool result."""
    device_id, client_id = "aa:bb:cc:10:00:03", "board-uuid-3"
    boot(server, device_id, client_id)
    camera = Camera(device_id, client_id)
    call = {"jsonrpc": "2.0", "id": 10_000, "method": "tools/call",
            "params": {"name": "self.camera.take_photo", "arguments": {"question": "What do you see?"}}}
    assert (await camera.answer(call))["error"] == {"message": NO_VISION}  # initialize offered no vision

    settings.XIAOZHI_VLLM_PROVIDER = "openai"  # as the server process is configured
    settings.XIAOZHI_VISION_URL = f"{server['url']}/xiaozhi/vision/"
    capability = vision_capability(device_id, client_id, agent={"vllm_provider": "openai"})
    camera.on_initialize({"protocolVersion": "2024-11-05", "capabilities": {"vision": capability}})
    reply = await camera.answer(call)
    [text] = [part["text"] for part in reply["result"]["content"]]
    assert reply["id"] == 10_000 and reply["result"]["isError"] is False
    assert text == answer_for(fake_vision.seen[-1]) and fake_vision.seen[-1].image_bytes == len(camera.jpeg)
