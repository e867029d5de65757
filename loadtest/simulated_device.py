"""A device that speaks the xiaozhi protocol over a real WebSocket, as the firmware does.

Used by ``manage.py talk``, the end-to-end tests, the latency benchmark and the load test. It goes
through OTA, the handshake headers and hello, streams Opus at real-time pace (60 ms a frame), keeps
sending silence after speech like the firmware's open microphone, and timestamps everything it
receives so the figures users feel (end of speech -> stt, -> tts start, -> first audio) can be read
off. It knows only the public protocol, so it can measure any xiaozhi-compatible server.
"""
from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
import numpy as np
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from loadtest.camera import Camera
from loadtest.device_tools import FirmwareTools
from voice.protocol import (
    Abort,
    AudioParams,
    BinaryFraming,
    Hello,
    Listen,
    ProtocolError,
    ServerHello,
    Stt,
    Tts,
    Llm,
    Mcp,
    encode,
    parse_server_message,
)

FRAME_SECONDS = 0.06
UPLINK_RATE = 16000


def spoken_frames(text: str) -> list[bytes]:
    """``text`` spoken by the bundled Piper voice, as 16 kHz 60 ms Opus frames (what a device sends)."""
    from voice.audio.opus import OpusEncoder
    from voice.audio.resample import resample
    from voice.providers import registry

    tts = registry.get_tts("piper")
    pcm = np.concatenate([np.asarray(c, dtype=np.int16) for c in tts.synthesize(text)])
    pcm = resample(pcm, tts.sample_rate, UPLINK_RATE)
    encoder = OpusEncoder(UPLINK_RATE, 60)
    return encoder.encode(pcm) + encoder.flush()


def silence_frames(count: int) -> list[bytes]:
    return list(_silence_frames(count))


@functools.lru_cache(maxsize=16)
def _silence_frames(count: int) -> tuple[bytes, ...]:
    """Cached: every turn of every device sends the same silence, and a load test must not spend
    its CPU re-encoding it."""
    from voice.audio.opus import OpusEncoder

    encoder = OpusEncoder(UPLINK_RATE, 60)
    return tuple(encoder.encode(np.zeros(int(UPLINK_RATE * FRAME_SECONDS) * count, np.int16)))


class LinkClosed(Exception):
    def __init__(self, code: int | None, reason: str = ""):
        super().__init__(f"closed {code} {reason}")
        self.code, self.reason = code, reason


class WebSocketLink:
    """A real client socket (websockets library)."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, url: str, headers: dict) -> WebSocketLink:
        return cls(await ws_connect(url, additional_headers=headers, max_size=10 * 1024 * 1024, compression=None))

    async def send(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self) -> str | bytes:
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise LinkClosed(exc.rcvd.code if exc.rcvd else 1006, exc.rcvd.reason if exc.rcvd else "") from None

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Received:
    at: float  # time.monotonic()
    kind: str  # "json" or "audio"
    message: object = None
    size: int = 0


@dataclass
class TurnResult:
    speech_end: float
    events: list[Received] = field(default_factory=list)

    def _first(self, predicate) -> Received | None:
        return next((e for e in self.events if predicate(e)), None)

    @property
    def stt(self) -> str | None:
        e = self._first(lambda e: isinstance(e.message, Stt))
        return e.message.text if e else None

    @property
    def sentences(self) -> list[str]:
        return [e.message.text for e in self.events if isinstance(e.message, Tts) and e.message.state == "sentence_start"]

    @property
    def tool_calls(self) -> list[dict]:
        """The ``tools/call`` params the server sent during the turn: ``{"name", "arguments"}``."""
        return [e.message.payload.get("params", {}) for e in self.events
                if isinstance(e.message, Mcp) and e.message.payload.get("method") == "tools/call"]

    @property
    def emotion(self) -> str | None:
        e = self._first(lambda e: isinstance(e.message, Llm))
        return e.message.emotion if e else None

    @property
    def audio(self) -> list[bytes]:
        return [e.message for e in self.events if e.kind == "audio"]

    def _ms(self, predicate) -> float | None:
        e = self._first(predicate)
        return None if e is None else (e.at - self.speech_end) * 1000

    @property
    def stt_ms(self):
        return self._ms(lambda e: isinstance(e.message, Stt))

    @property
    def tts_start_ms(self):
        return self._ms(lambda e: isinstance(e.message, Tts) and e.message.state == "start")

    @property
    def first_audio_ms(self):
        return self._ms(lambda e: e.kind == "audio")

    @property
    def stopped(self) -> bool:
        return self._first(lambda e: isinstance(e.message, Tts) and e.message.state == "stop") is not None


class SimulatedDevice:
    def __init__(self, device_id: str | None = None, client_id: str | None = None, binary_version: int = 1,
                 board: str = "simulated-board", firmware: str = "1.9.0", keep_audio: bool = True,
                 mcp: bool = True, camera: bool = False):
        self.device_id = device_id or "02:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:5])
        self.client_id = client_id or str(uuid.uuid4())
        self.binary_version = binary_version
        self.board = board
        self.firmware = firmware
        self.token = ""
        self.ws_url: str | None = None
        self.link = None
        self.server_hello: ServerHello | None = None
        self.framing = BinaryFraming(binary_version)
        self.events: list[Received] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._new_event = asyncio.Event()
        self._reader: asyncio.Task | None = None
        # keep_audio=False stores only sizes of received audio (bounded memory for load tests);
        # on_send(scheduled, actual) is called as each paced frame is about to leave (send lateness).
        self.keep_audio = keep_audio
        self.on_send = None
        self.continuous_pace = False
        # The device's MCP server (the firmware's common tools), announced by features.mcp in the
        # hello; anything with ``answer(payload) -> list[dict]`` may replace it (tests script edge cases).
        # camera=True adds the firmware's camera tool, which uploads a real JPEG to the server's vision URL.
        # False: the device still advertises MCP in its hello, but a test answers the requests itself.
        self.answers_mcp = True
        self.tools: FirmwareTools | None = (
            FirmwareTools(camera=Camera(self.device_id, self.client_id) if camera else None) if mcp else None)
        self._later: set[asyncio.Task] = set()  # replies that come later (a photo's upload); cancelled at close

    # -- OTA and connection --------------------------------------------------------------------------------
    async def ota(self, ota_url: str) -> dict:
        headers = {"Device-Id": self.device_id, "Client-Id": self.client_id, "Activation-Version": "1",
                   "User-Agent": f"{self.board}/{self.firmware}", "Accept-Language": "en-US"}
        body = {"version": 2, "mac_address": self.device_id, "uuid": self.client_id,
                "application": {"name": "xiaozhi", "version": self.firmware},
                "board": {"type": self.board, "name": self.board, "mac": self.device_id}}
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(ota_url, json=body, headers=headers)
        response.raise_for_status()
        answer = response.json()
        ws = answer.get("websocket") or {}
        self.ws_url = ws.get("url")
        self.token = ws.get("token") or ""
        if ws.get("version") in (1, 2, 3):
            self.use_binary_version(ws["version"])
        return answer

    def use_binary_version(self, version: int) -> None:
        self.binary_version = version
        self.framing = BinaryFraming(version)

    async def connect(self, ws_url: str | None = None, hello: bool = True, hello_timeout: float = 10) -> ServerHello | None:
        self.ws_url = ws_url or self.ws_url
        return await self.attach(await WebSocketLink.open(self.ws_url, self.handshake_headers()), hello, hello_timeout)

    def handshake_headers(self) -> dict:
        headers = {"Protocol-Version": str(self.binary_version), "Device-Id": self.device_id, "Client-Id": self.client_id}
        if self.token:
            headers["Authorization"] = self.token if " " in self.token else f"Bearer {self.token}"
        return headers

    async def attach(self, link, hello: bool = True, hello_timeout: float = 10) -> ServerHello | None:
        """Start talking over an open link (a real socket, or Channels' test communicator)."""
        self.link = link
        self._reader = asyncio.create_task(self._read(), name=f"device-reader:{self.device_id}")
        if not hello:
            return None
        features = {"mcp": True} if self.tools is not None else {}
        await self.send_json(encode(Hello(version=self.binary_version, features=features,
                                          audio_params=AudioParams("opus", UPLINK_RATE, 1, 60))))
        event = await self.wait_for(lambda e: isinstance(e.message, ServerHello) or e.kind == "closed", hello_timeout)
        self.server_hello = event.message if isinstance(event.message, ServerHello) else None
        return self.server_hello

    async def close(self) -> None:
        if self.link is not None:
            await self.link.close()
        if self._reader:
            self._reader.cancel()
        for task in list(self._later):
            task.cancel()

    async def _read(self) -> None:
        try:
            while True:
                data = await self.link.recv()
                now = time.monotonic()
                if isinstance(data, bytes):
                    frame = self.framing.decode(data)
                    self.events.append(Received(now, "audio", frame.payload if self.keep_audio else None, len(frame.payload)))
                else:
                    try:
                        message = parse_server_message(data)
                    except ProtocolError:
                        message = data
                    self.events.append(Received(now, "json", message, len(data)))
                    if isinstance(message, Mcp) and self.tools is not None and self.answers_mcp:
                        await self._answer_mcp(message.payload)
                self._new_event.set()
        except LinkClosed as exc:
            self.close_code, self.close_reason = exc.code, exc.reason
            self.events.append(Received(time.monotonic(), "closed", exc.code))
            self._new_event.set()

    async def wait_for(self, predicate, timeout: float, since: int = 0) -> Received:
        """The first event (from index ``since``) matching ``predicate``; TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            for event in self.events[checked:]:
                if predicate(event):
                    return event
            checked = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the server did not send the expected message in time")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_closed(self, timeout: float = 5) -> int | None:
        await self.wait_for(lambda e: e.kind == "closed", timeout)
        return self.close_code

    # -- sending ---------------------------------------------------------------------------------------------------
    async def send_json(self, text: str) -> None:
        await self.link.send(text)

    async def _answer_mcp(self, payload) -> None:
        for reply in self.tools.answer(payload):
            if not isinstance(reply, Mapping):  # a reply that comes later: the reader goes on meanwhile
                task = asyncio.ensure_future(self._send_later(reply))
                self._later.add(task)
                task.add_done_callback(self._later.discard)
                continue
            try:
                await self.send_mcp(reply)
            except Exception:  # noqa: BLE001 - the socket is closing; the reader sees it next
                return

    async def _send_later(self, reply) -> None:
        payload = await reply
        try:
            await self.send_mcp(payload)
        except Exception:  # noqa: BLE001 - the socket closed while the tool ran
            pass

    async def send_mcp(self, payload: dict) -> None:
        """One JSON-RPC message to the server, in the xiaozhi envelope."""
        session_id = self.server_hello.session_id if self.server_hello else ""
        await self.send_json(encode(Mcp(payload, session_id)))

    def mcp_requests(self, method: str | None = None) -> list[dict]:
        """The JSON-RPC payloads the server sent, in order (of one method if given)."""
        return [e.message.payload for e in self.events if isinstance(e.message, Mcp)
                and (method is None or e.message.payload.get("method") == method)]

    async def send_audio(self, payload: bytes) -> None:
        await self.link.send(self.framing.encode(payload, int(time.monotonic() * 1000) & 0xFFFFFFFF))

    async def listen(self, state: str, mode: str | None = None, text: str = "") -> None:
        await self.send_json(encode(Listen(state, mode if state == "start" else None, text)))

    async def abort(self, reason: str = "") -> None:
        await self.send_json(encode(Abort(reason)))

    async def stream(self, frames: list[bytes], pace: float = FRAME_SECONDS, stop_when=None,
                     start: float | None = None) -> float:
        """Send frames on a real-time clock; returns the monotonic time the last one left.
        ``stop_when`` (a predicate over events) ends the stream early, as the firmware stops its
        microphone when the server starts speaking. ``start``: when the first frame is due (default now)."""
        start = time.monotonic() if start is None else start
        last = start
        seen = len(self.events)
        for i, frame in enumerate(frames):
            delay = start + i * pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop_when is not None and any(stop_when(e) for e in self.events[seen:]):
                break
            if self.on_send is not None:
                self.on_send(start + i * pace, time.monotonic())
            await self.send_audio(frame)
            last = time.monotonic()
        return last

    # -- one spoken turn ------------------------------------------------------------------------------------------
    async def turn(self, frames: list[bytes], mode: str = "auto", timeout: float = 30, trailing_silence: float = 3.0,
                   send_listen_start: bool = True) -> TurnResult:
        """Speak ``frames`` and collect the server's answer until ``tts stop`` (or timeout)."""
        first_index = len(self.events)
        if send_listen_start:
            await self.listen("start", mode)
        speech_end = await self.stream(frames)
        result = TurnResult(speech_end)
        tts_started = lambda e: isinstance(e.message, Tts) and e.message.state == "start"  # noqa: E731
        if mode == "manual":
            await self.listen("stop")
        else:
            silence = silence_frames(int(trailing_silence / FRAME_SECONDS))
            # continuous_pace: the silence keeps the microphone's 60 ms clock instead of its first
            # frame leaving right after the last speech frame (the load test wants exact timing).
            await self.stream(silence, stop_when=None if mode == "realtime" else tts_started,
                              start=speech_end + FRAME_SECONDS if self.continuous_pace else None)
        try:
            await self.wait_for(lambda e: (isinstance(e.message, Tts) and e.message.state == "stop") or e.kind == "closed",
                                timeout - (time.monotonic() - speech_end), since=first_index)
        except TimeoutError:
            pass
        result.events = self.events[first_index:]
        return result
