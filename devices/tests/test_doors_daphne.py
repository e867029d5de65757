"""The socket doors over a real Daphne and real sockets from 127.0.0.1: a takeover by another
Client-Id is refused while the owner stays connected, the per-address socket cap and the handshake
rate limit close with 4429, and the OTA floods get 429 from the server process itself."""
import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voice.protocol import CloseCode

pytestmark = [pytest.mark.e2e]

HELLO = json.dumps({"type": "hello", "version": 1, "transport": "websocket",
                    "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}})
PER_ADDRESS = 3  # sockets
PER_DEVICE = 4  # handshakes a minute


@pytest.fixture(scope="module")
def server(start_server):
    """The server with fake models (the doors do not need them) and tight limits for 127.0.0.1. With
    REDIS_URL it counts in the same Redis as this process: conftest's fresh_rate_limits clears the
    counts before each test."""
    with start_server("doors", startup_timeout=120, XIAOZHI_PRELOAD_MODELS="false", XIAOZHI_WORKER_BACKEND="local",
                      XIAOZHI_ASR_PROVIDER="fake", XIAOZHI_LLM_PROVIDER="fake", XIAOZHI_TTS_PROVIDER="fake",
                      XIAOZHI_RATE_LIMIT_EXEMPT="", XIAOZHI_TRUSTED_PROXIES="",
                      XIAOZHI_PERF__SERVER__MAX_CONNECTIONS_PER_ADDRESS=PER_ADDRESS,
                      XIAOZHI_PERF__RATE_LIMITS__HANDSHAKE_PER_DEVICE__REQUESTS=PER_DEVICE,
                      XIAOZHI_PERF__RATE_LIMITS__OTA_PER_ADDRESS__REQUESTS=5) as running:
        yield running.host, running.log_path


async def open_device(base, mac, client_id, hello=True):
    ws = await connect(f"ws://{base}/xiaozhi/v1/", additional_headers={
        "Device-Id": mac, "Client-Id": client_id, "Protocol-Version": "1"})
    if hello:
        try:
            await ws.send(HELLO)
        except ConnectionClosed:  # refused already: first_answer reads the code
            pass
    return ws


async def first_answer(ws):
    """The server's hello, or the close code it sent instead."""
    try:
        return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
    except ConnectionClosed:
        return ws.close_code


async def test_a_takeover_by_another_client_is_refused_and_the_owner_keeps_its_session(server):
    base, log_path = server
    owner = await open_device(base, "aa:00:00:00:10:01", "uuid-owner")
    assert await first_answer(owner) == "hello"
    intruder = await open_device(base, "aa:00:00:00:10:01", "uuid-intruder")
    assert await first_answer(intruder) == CloseCode.FORBIDDEN
    await asyncio.wait_for(await owner.ping(), 10)  # the owner's socket is still open and served
    assert owner.close_code is None
    assert "takeover attempt" in log_path.read_text()
    await owner.close()


async def test_the_socket_cap_per_address_closes_with_4429_and_frees_on_close(server):
    base, _ = server
    held = [await open_device(base, f"aa:00:00:00:20:0{i}", f"c{i}") for i in range(PER_ADDRESS)]
    assert [await first_answer(ws) for ws in held] == ["hello"] * PER_ADDRESS
    over = await open_device(base, "aa:00:00:00:20:09", "c9")
    assert await first_answer(over) == CloseCode.RATE_LIMITED
    # (Daphne sends the code only, no reason text: the code is what tells the cases apart)
    await held.pop().close()
    again = None
    for _ in range(50):  # the server frees the slot when it sees the close, a moment after ours
        again = await open_device(base, "aa:00:00:00:20:08", "c8")
        if await first_answer(again) == "hello":
            break
        await asyncio.sleep(0.1)
    assert again.close_code is None
    for ws in (*held, again):
        await ws.close()


async def test_a_handshake_flood_for_one_device_closes_with_4429(server):
    base, _ = server
    answers = []
    for _ in range(PER_DEVICE + 2):
        ws = await open_device(base, "aa:00:00:00:30:01", "uuid-flood")
        answers.append(await first_answer(ws))
        await ws.close()
    assert answers == ["hello"] * PER_DEVICE + [CloseCode.RATE_LIMITED] * 2


def test_an_ota_flood_gets_429_with_retry_after_from_the_server(server):
    base, _ = server
    answers = [httpx.post(f"http://{base}/xiaozhi/ota/", json={}, headers={"Device-Id": f"aa:00:00:00:40:{i:02x}"})
               for i in range(7)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    assert 0 < int(answers[-1].headers["Retry-After"]) <= 60
    forged = httpx.post(f"http://{base}/xiaozhi/ota/", json={}, headers={"Device-Id": "aa:00:00:00:40:99",
                                                                           "Host": "evil.example"})
    assert forged.status_code == 400  # an unknown Host is refused before anything else
