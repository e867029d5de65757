"""The transport limits of ``python -m xiaozhi.server``, probed as a hostile client would, over real
sockets against a real server process: slow request heads, oversized heads, a flood of frames.

The server runs the fake models and loads none at start (the transport is what is under test), with
a short ``server.request_timeout`` so the slow-client probes take seconds.
"""
import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
import websockets

from loadtest.server import ServerProcess
from xiaozhi.server import FlowControlledQueue

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT = 3.0  # server.request_timeout for this server
MARGIN = 2.0  # scheduling slack on a loaded 2-core machine; the deadline itself is the bound asserted
HELLO = json.dumps({"type": "hello", "version": 1, "transport": "websocket",
                    "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}})


@pytest.fixture(scope="module")
def server(start_server):
    with start_server("server", startup_timeout=60, XIAOZHI_PRELOAD_MODELS="false", XIAOZHI_MONITORING_SCHEDULER="off",
                      XIAOZHI_ASR_PROVIDER="fake", XIAOZHI_LLM_PROVIDER="fake", XIAOZHI_TTS_PROVIDER="fake",
                      XIAOZHI_PERF__SERVER__REQUEST_TIMEOUT=REQUEST_TIMEOUT) as running:
        yield running


def device_headers(n: int) -> dict:
    return {"Protocol-Version": "1", "Device-Id": f"02:00:00:00:e0:{n:02x}", "Client-Id": f"transport-test-{n}"}


async def hello_and_ping(server: ServerProcess, n: int, open_timeout: float = 10) -> None:
    """What a normal device does first: handshake, hello (answered with a session), ping (pong)."""
    async with websockets.connect(server.ws_url, additional_headers=device_headers(n),
                                  open_timeout=open_timeout) as ws:
        await greet(ws)


async def greet(ws) -> None:
    """Hello (answered with a session), then ping (pong), on an open device socket."""
    await ws.send(HELLO)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert hello["type"] == "hello" and hello["session_id"]
    await ws.send(json.dumps({"type": "ping"}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes; a reset raises, which is what must not happen."""
    sock.settimeout(limit)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- slow request heads ------------------------------------------------------------------------------------
async def open_slow(server: ServerProcess):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    return reader, writer, time.monotonic()


async def slow_loris(connection, closed_after: list, stop: float) -> None:
    """A WebSocket upgrade whose head never ends: one more header line every second."""
    reader, writer, opened = connection
    writer.write(b"GET /xiaozhi/v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
    line, closed = 0, False
    try:
        while time.monotonic() < stop:
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                writer.write(b"X-Slow-%d: still typing\r\n" % line)
                line += 1
                await writer.drain()
                continue
            if not data:  # closed by the server (after its 408, read on the previous turn)
                closed = True
                break
    except ConnectionError:
        closed = True  # a close while we were still writing
    finally:
        writer.close()
    if closed:
        closed_after.append(time.monotonic() - opened)


async def test_slow_request_heads_are_closed_at_the_deadline_and_leave_room_for_devices(server):
    """Each slow client is closed within server.request_timeout of its connection, although it keeps
    sending. With fewer free descriptors than slow clients the server is full (Twisted closes each
    new connection at once), but only until the deadline: a device retrying gets in then."""
    # Warm: the first session opens what every later one reuses. It stays connected while the
    # descriptors are counted and the server is full: a session that ends closes descriptors after
    # its client has gone (its channel-layer connection, when its blocking read is cancelled; its
    # socket), and one freed after the count let the device in before the deadline (refused == 0).
    warm = await websockets.connect(server.ws_url, additional_headers=device_headers(1))
    await greet(warm)
    soft, hard = psutil.Process(server.pid).rlimit(psutil.RLIMIT_NOFILE)
    spare, slow_clients = 30, 45
    psutil.Process(server.pid).rlimit(psutil.RLIMIT_NOFILE, (psutil.Process(server.pid).num_fds() + spare, hard))
    try:
        closed_after: list[float] = []
        stop = time.monotonic() + 6 * REQUEST_TIMEOUT  # the slow clients give up by themselves after this
        connections = await asyncio.gather(*(open_slow(server) for _ in range(slow_clients)))
        full_since = time.monotonic()
        loris = [asyncio.create_task(slow_loris(c, closed_after, stop)) for c in connections]
        refused = 0
        while True:
            try:
                await hello_and_ping(server, 2)
                break
            except (OSError, EOFError, websockets.exceptions.WebSocketException):
                refused += 1
                assert time.monotonic() - full_since <= REQUEST_TIMEOUT + MARGIN, "the server stayed full"
                await asyncio.sleep(0.3)
        await asyncio.gather(*loris)
    finally:
        psutil.Process(server.pid).rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        await warm.close()
    assert refused >= 1  # the slow clients did fill the server
    assert len(closed_after) == slow_clients, "some slow clients were never closed"
    assert max(closed_after) <= REQUEST_TIMEOUT + MARGIN


def test_a_slow_request_is_answered_408(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        opened = time.monotonic()
        answer = read_until_closed(sock, limit=REQUEST_TIMEOUT + MARGIN + 5)
    assert time.monotonic() - opened <= REQUEST_TIMEOUT + MARGIN
    assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within" in answer


def test_an_idle_kept_alive_connection_is_closed_after_the_deadline(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_until_closed(sock, limit=REQUEST_TIMEOUT + MARGIN + 5)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1  # closed, nothing more said


# -- oversized request heads ----------------------------------------------------------------------------------
@pytest.mark.parametrize("head", [
    pytest.param(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", id="one 200 KB header"),
    pytest.param(b"GET /xiaozhi/v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Cookie: " + b"c" * 200_000 + b"\r\n\r\n", id="a WebSocket upgrade with a 200 KB cookie"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 + b"".join(b"X-Many-%d: %s\r\n" % (i, b"m" * 200) for i in range(1000)) + b"\r\n", id="1000 headers of 200 B"),
])
def test_an_oversized_head_is_answered_431_before_the_close(server, head):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)  # the server reads what we still send after its answer: no reset
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert answer.endswith(b"The request line and headers must fit in 16384 bytes.\n")
    assert httpx.get(f"{server.base}/health", timeout=10).status_code == 200  # and the server serves on


def test_a_malformed_head_is_answered_400_with_a_body(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon in this header\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and answer.endswith(b"Malformed HTTP request.\n")


def test_a_head_within_the_limit_is_served(server):
    response = httpx.get(f"{server.base}/health", headers={"X-Fits": "f" * 15_000}, timeout=10)
    assert response.status_code == 200


# -- a flood of frames --------------------------------------------------------------------------------------
async def flood(server: ServerProcess, n: int, until: float) -> int:
    """Send 60 KB JSON text frames as fast as the socket takes them, then prove each was handled:
    the ping sent last is answered only after every frame before it."""
    pad = json.dumps({"type": "mcp", "payload": {"pad": "x" * 60_000}})
    sent = 0
    async with websockets.connect(server.ws_url, additional_headers=device_headers(n), ping_interval=None,
                                  max_size=None) as ws:
        await ws.send(HELLO)
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
        while time.monotonic() < until:
            await ws.send(pad)
            sent += 1
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "pong"
    return sent


async def test_a_flood_of_frames_is_slowed_by_tcp_not_buffered_in_memory(server):
    await hello_and_ping(server, 3)
    start = server.rss()
    until = time.monotonic() + 8
    floods = [asyncio.create_task(flood(server, 10 + i, until)) for i in range(4)]
    peak = start
    device_done = False
    while not all(f.done() for f in floods):
        if not device_done and time.monotonic() > until - 5:
            await hello_and_ping(server, 4)  # a normal device, in the middle of the flood
            device_done = True
        peak = max(peak, server.rss())
        await asyncio.sleep(0.2)
    sent = [f.result() for f in floods]
    assert device_done and min(sent) > 100  # the flood did flow (some GB per minute on loopback)
    assert peak - start < 150 * 2**20, f"RSS grew {(peak - start) / 2**20:.0f} MB under the flood"
    await asyncio.sleep(1)
    assert server.rss() - start < 150 * 2**20
    await hello_and_ping(server, 5)


def test_the_receive_queue_pauses_reading_when_full_and_resumes_at_half():
    calls = []
    queue = FlowControlledQueue(4, 1000, pause=lambda: calls.append("pause"), resume=lambda: calls.append("resume"))
    for _ in range(5):
        queue.put_nowait({"type": "websocket.receive", "text": "x"})
    assert calls == ["pause"]  # the fifth frame is over four
    queue.put_nowait({"type": "websocket.receive", "text": "y"})  # already paused: nothing lost, no second pause
    for _ in range(3):
        queue.get_nowait()
    assert calls == ["pause"]  # three left: above half
    queue.get_nowait()
    assert calls == ["pause", "resume"] and queue.qsize() == 2
    queue.put_nowait({"type": "websocket.receive", "bytes": b"z" * 1001})  # over the byte bound alone
    assert calls == ["pause", "resume", "pause"] and queue.queued_bytes == 1003


async def test_frames_split_across_reads_and_frames_over_the_small_payload_bound_are_heard(server):
    """``xiaozhi.ws_frames`` unmasks small frames itself: a masked frame written a few bytes at a
    time (each piece its own read) and a hello larger than its bound must both be understood."""
    from xiaozhi.ws_frames import SMALL_PAYLOAD

    padded = HELLO[:-1] + " " * (SMALL_PAYLOAD + 500) + "}"
    async with websockets.connect(server.ws_url, additional_headers=device_headers(6)) as ws:
        await ws.send(padded)
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
        payload = json.dumps({"type": "ping"}).encode()
        mask = bytes([0x37, 0xFA, 0x21, 0x3D])
        frame = masked_frame(payload, opcode=1, mask=mask)
        for start in range(0, len(frame), 3):
            ws.transport.write(frame[start:start + 3])
            await asyncio.sleep(0.02)  # separate segments: separate reads on the server
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"


def masked_frame(payload: bytes, opcode: int = 2, mask: bytes = b"\x9c\x01\x7e\x33", masked: bool = True,
                 length16: bool = False) -> bytes:
    """One final client frame, written by hand (the client library would not coalesce or misbehave).
    ``length16``: a 16-bit length field even for a short payload (not the minimal encoding)."""
    size = len(payload)
    if size < 126 and not length16:
        header = bytes([0x80 | opcode, (0x80 if masked else 0) | size])
    else:
        header = bytes([0x80 | opcode, (0x80 if masked else 0) | 126]) + size.to_bytes(2, "big")
    if not masked:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def v3_json(message: dict, pad: int = 0) -> bytes:
    body = json.dumps(message).encode() + b" " * pad
    return bytes([1, 0]) + len(body).to_bytes(2, "big") + body  # protocol v3: type 1 = JSON


async def test_device_frames_coalesced_in_one_read_mixed_with_others_are_each_heard_in_order(server):
    """``xiaozhi.ws_frames`` takes small binary frames itself and leaves the rest to autobahn: one
    write holding binary frames, a text frame, a binary frame too long for the fast path and a frame
    cut in the middle must give one answer per frame, in order."""
    from xiaozhi.ws_frames import SMALL_PAYLOAD

    headers = {**device_headers(7), "Protocol-Version": "3"}
    async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
        await ws.send(HELLO.replace('"version": 1', '"version": 3'))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
        ping = masked_frame(v3_json({"type": "ping"}))
        text_ping = masked_frame(json.dumps({"type": "ping"}).encode(), opcode=1)
        opus_sized = masked_frame(v3_json({"type": "ping"}, pad=120))  # a 16-bit length, as most Opus packets
        long_ping = masked_frame(v3_json({"type": "ping"}, pad=SMALL_PAYLOAD))  # over the bound: autobahn's
        tail = masked_frame(v3_json({"type": "ping"}, pad=120))
        ws.transport.write(opus_sized + ping * 3 + text_ping + opus_sized + ping + long_ping + ping * 2 + tail[:7])
        await asyncio.sleep(0.05)
        ws.transport.write(tail[7:])
        for i in range(11):
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong", i
        await ws.send(json.dumps({"type": "ping"}))  # the connection is still in step
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"


@pytest.mark.parametrize("kind", ["unmasked", "non-minimal length"])
async def test_a_malformed_device_frame_is_still_a_protocol_error(server, kind):
    headers = {**device_headers(8), "Protocol-Version": "3"}
    async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
        await ws.send(HELLO.replace('"version": 1', '"version": 3'))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "hello"
        payload = v3_json({"type": "ping"})
        ws.transport.write(masked_frame(payload, masked=kind != "unmasked", length16=kind == "non-minimal length"))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1002
