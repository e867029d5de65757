"""A stand-in for an OpenAI-compatible server on 127.0.0.1, for tests: a real HTTP/1.1 server (the
standard library's, one thread per request) answering the three endpoints the voice providers use,
so the providers and httpx run unmodified.

- ``POST /v1/audio/transcriptions``: reads the multipart form, checks that ``file`` is a mono 16-bit
  WAV at 16 kHz (a wrong one is answered 400, as a real server would refuse it) and answers
  ``{"text": transcript}``.
- ``POST /v1/audio/speech``: streams a tone in the requested ``response_format`` (``pcm``: raw
  24 kHz s16le; ``wav``: a streaming WAV with unknown sizes, at ``wav_rate``; ``mp3``) with chunked
  transfer, a piece at a time, ``chunk_delay`` apart; with ``hold`` set it sends the first half
  and waits for ``release`` before the rest, so a test sees audio before the body has ended.
- ``POST /v1/chat/completions``: streams ``reply`` piece by piece as server-sent events; with
  ``chat_hold_after`` = n it sends n pieces and waits for ``chat_release`` before the rest, so a test
  sees the reply's first sentence spoken while the model is still writing.

Each request of a path first takes the next step of ``script[path]`` (then "ok" once it runs out):
"drop" closes without answering, "400"/"401"/"500"/"503" answer that status, "429:<s>" answers 429
with Retry-After <s>, "stall" waits ``stall_seconds`` before answering, "json" answers 200 with a
JSON body where audio or a transcript was expected.
"""
from __future__ import annotations

import email.parser
import email.policy
import http.server
import io
import json
import struct
import threading
import time
import wave
from dataclasses import dataclass, field

import numpy as np

TRANSCRIPTIONS = "/v1/audio/transcriptions"
SPEECH = "/v1/audio/speech"
CHAT = "/v1/chat/completions"
PCM_RATE = 24000  # what OpenAI's pcm format is
PIECES = 8  # the audio is sent in this many chunks


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def streaming_wav(pcm: np.ndarray, rate: int) -> bytes:
    """A WAV as a streaming server writes it: the sizes unknown when the header left (0xFFFFFFFF)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    data = bytearray(out.getvalue())
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    return bytes(data)


@dataclass
class Request:
    path: str
    headers: dict
    fields: dict = field(default_factory=dict)  # form fields or JSON body
    wav: tuple | None = None  # (channels, sample width, rate, frames) of a transcription's file


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        server: FakeOpenAIServer = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = Request(self.path, dict(self.headers))
        with server.lock:
            server.requests.append(request)
            server.arrivals.append(time.monotonic())
            steps = server.script.get(self.path, [])
            step = steps.pop(0) if steps else "ok"
        if step == "drop":
            self.close_connection = True
            return
        if step == "stall":
            time.sleep(server.stall_seconds)
        status, _, retry_after = step.partition(":")
        if status.isdigit():
            self._answer(int(status), {"error": {"message": f"scripted {status}"}}, retry_after)
            return
        if step == "json":
            self._answer(200, {"error": {"message": "this is not what was asked for"}})
            return
        if self.path == TRANSCRIPTIONS:
            self._transcribe(server, request, body)
        elif self.path == SPEECH:
            request.fields = json.loads(body)
            self._speak(server, request.fields.get("response_format", "mp3"))
        elif self.path == CHAT:
            request.fields = json.loads(body)
            self._chat(server)
        else:
            self._answer(404, {"error": {"message": f"no such endpoint {self.path}"}})

    def _transcribe(self, server, request, body):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        files = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if part.get_filename():
                files[name] = payload
            else:
                request.fields[name] = payload.decode()
        try:
            with wave.open(io.BytesIO(files["file"])) as w:
                request.wav = (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes())
        except (KeyError, wave.Error, EOFError) as exc:
            self._answer(400, {"error": {"message": f"file is not a WAV: {exc}"}})
            return
        if request.wav[:3] != (1, 2, 16000):
            self._answer(400, {"error": {"message": f"expected 16 kHz mono 16-bit, got {request.wav}"}})
            return
        self._answer(200, {"text": server.transcript})

    def _speak(self, server, response_format):
        if response_format == "pcm":
            audio, kind = tone(server.seconds, PCM_RATE).tobytes(), "audio/pcm"
        elif response_format == "wav":
            audio, kind = streaming_wav(tone(server.seconds, server.wav_rate), server.wav_rate), "audio/wav"
        else:
            from voice.tests.fake_edge import encode_mp3

            audio, kind = encode_mp3(tone(server.seconds, 24000)), "audio/mpeg"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        step = -(-len(audio) // PIECES) | 1  # odd-sized pieces: a sample split across two chunks
        for index, start in enumerate(range(0, len(audio), step)):
            if index == PIECES // 2 and server.hold:
                server.held.set()
                server.release.wait(30)
            elif index:
                time.sleep(server.chunk_delay)
            self._chunk(audio[start:start + step])
        self._chunk(b"")

    def _chat(self, server):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, piece in enumerate(server.reply):
            if index == server.chat_hold_after:
                server.chat_held.set()
                server.chat_release.wait(30)
            self._chunk(f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]}, ensure_ascii=False)}\n\n".encode())
            time.sleep(server.chunk_delay)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _answer(self, status, payload, retry_after=""):
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class FakeOpenAIServer:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.arrivals: list[float] = []
        self.script: dict[str, list[str]] = {}
        self.transcript = "What time is it?"
        self.reply = ["It is", " noon."]
        self.seconds = 1.0  # of speech per request
        self.wav_rate = 22050
        self.chunk_delay = 0.02
        self.stall_seconds = 2.0
        self.hold = False
        self.chat_hold_after: int | None = None
        self.chat_held = threading.Event()
        self.chat_release = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/v1"

    def of(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.chat_release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
