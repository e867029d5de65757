"""A stand-in for Microsoft's Edge TTS endpoint on 127.0.0.1, for tests: a real WebSocket server
(the ``websockets`` package) speaking as much of the service's protocol as edge-tts needs, so the
provider and edge-tts itself run unmodified. It answers with real MP3 (24 kHz mono, 48 kbit/s,
what the service sends), made from speech by LAME.

The text of the request picks a behaviour: "refuse" closes the socket without audio, "stall"
sends nothing, "hold" sends the first half of the audio and waits for ``release`` before the rest.
"""
from __future__ import annotations

import asyncio
import re
import threading
import uuid
from dataclasses import dataclass

import numpy as np

MESSAGES = 8  # the MP3 is sent in this many binary messages


def encode_mp3(pcm: np.ndarray, sample_rate: int = 24000) -> bytes:
    """Mono int16 PCM as the MP3 Edge sends: 48 kbit/s CBR, mono."""
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(48)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(5)
    return bytes(encoder.encode(np.asarray(pcm, dtype=np.int16).tobytes()) + encoder.flush())


@dataclass
class Request:
    voice: str
    text: str


class FakeEdgeServer:
    def __init__(self, mp3: bytes):
        self.mp3 = mp3
        self.requests: list[Request] = []
        self.release = threading.Event()
        self.held = threading.Event()  # set once a "hold" request has sent its first half
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run, name="fake-edge", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/consumer/speech/synthesize/readaloud/edge/v1?TrustedClientToken=test"

    def start(self) -> FakeEdgeServer:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        self.release.set()
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = self._loop.create_future()
        async with serve(self._handle, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            await self._stop

    async def _handle(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            config = await websocket.recv()
            assert "Path:speech.config" in config, config
            ssml = await websocket.recv()
            voice = re.search(r"<voice name='([^']*)'>", ssml).group(1)
            text = re.search(r"<prosody [^>]*>(.*)</prosody>", ssml, re.S).group(1)
            self.requests.append(Request(voice, text))
            request_id = re.search(r"X-RequestId:(\w+)", ssml).group(1)
            if "refuse" in text:
                await websocket.close(1011, "synthesis failed")
                return
            if "stall" in text:
                await asyncio.sleep(3600)
            await websocket.send(_text(request_id, "turn.start", '{"context":{"serviceTag":"fake"}}'))
            pieces = np.array_split(np.frombuffer(self.mp3, np.uint8), MESSAGES)
            for index, piece in enumerate(pieces):
                if "hold" in text and index == MESSAGES // 2:
                    self.held.set()
                    await asyncio.to_thread(self.release.wait, 30)
                if piece.size:
                    await websocket.send(_audio(request_id, piece.tobytes()))
            await websocket.send(_audio(request_id, b"", content_type=False))  # end of audio, as the service does
            await websocket.send(_text(request_id, "turn.end", "{}"))
            await websocket.wait_closed()
        except ConnectionClosed:
            pass


def _text(request_id: str, path: str, body: str) -> str:
    return f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n{body}"


def _audio(request_id: str, data: bytes, content_type: bool = True) -> bytes:
    """A binary frame: 2-byte big-endian header length, the headers, then the MP3 bytes."""
    headers = f"X-RequestId:{request_id}\r\n"
    if content_type:
        headers += "Content-Type:audio/mpeg\r\n"
    headers += f"X-StreamId:{uuid.uuid4().hex}\r\nPath:audio\r\n"
    encoded = headers.encode()
    return len(encoded).to_bytes(2, "big") + encoded + data
