"""A stand-in for a remote OpenAI-compatible vision server on 127.0.0.1 (the remote boundary, for
tests and benchmarks): ``POST /v1/chat/completions`` with an ``image_url`` data URI, answered with
text that names what it received (the question and the photo's decoded size and type), streamed as
server-sent events or as one JSON reply, as the request asks.

``hold()`` makes requests wait until ``release()`` (a full queue, deterministically); ``fail_next``
answers the next requests with that HTTP status; ``delay`` seconds are spent on each answer.
"""
from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from dataclasses import dataclass


@dataclass
class Seen:
    """One request as the vision server received it."""

    order: int
    question: str
    image_bytes: int
    image_type: str
    model: str | None
    system: str


def answer_for(seen: Seen) -> str:
    return f"I see a red square on a blue sky. You asked: {seen.question} ({seen.image_type}, {seen.image_bytes} bytes)"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - http.server's name
        server: FakeVisionServer = self.server.owner
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        with server.lock:
            status = server.fail_next.pop(0) if server.fail_next else None
            seen = _parse(body, len(server.seen))
            server.seen.append(seen)
            server.in_flight += 1
        try:
            if status is not None:
                self._send(status, "application/json", json.dumps({"error": {"message": "scripted failure"}}).encode())
                return
            server.gate.wait(server.hold_limit)
            if server.delay:
                time.sleep(server.delay)
            text = answer_for(seen)
            if body.get("stream"):
                words = text.split(" ")
                events = [json.dumps({"choices": [{"delta": {"content": w if i == 0 else " " + w}}]})
                          for i, w in enumerate(words)]
                payload = "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, "text/event-stream", payload.encode())
            else:
                reply = {"choices": [{"message": {"role": "assistant", "content": text}}]}
                self._send(200, "application/json", json.dumps(reply).encode())
        finally:
            with server.lock:
                server.in_flight -= 1
                server.done.append(seen.order)

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _parse(body: dict, order: int) -> Seen:
    question, image_bytes, image_type, system = "", 0, "", ""
    for message in body.get("messages", []):
        content = message.get("content")
        if message.get("role") == "system" and isinstance(content, str):
            system = content
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "text":
                question = part.get("text", "")
            elif part.get("type") == "image_url":
                uri = part["image_url"]["url"]
                head, _, data = uri.partition(",")
                raw = base64.b64decode(data)
                image_bytes = len(raw)
                image_type = head.removeprefix("data:").removesuffix(";base64")
                if image_type == "image/jpeg" and not raw.startswith(b"\xff\xd8\xff"):
                    image_type = "not-a-jpeg"
    return Seen(order, question, image_bytes, image_type, body.get("model"), system)


class FakeVisionServer:
    def __init__(self, delay: float = 0.0, hold_limit: float = 60.0):
        self.delay = delay
        self.hold_limit = hold_limit  # a held request goes on by itself after this long (no test hangs)
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.seen: list[Seen] = []
        self.done: list[int] = []
        self.in_flight = 0
        self.fail_next: list[int] = []
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-vision", daemon=True)

    def start(self) -> FakeVisionServer:
        self._thread.start()
        return self

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def stop(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeVisionServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
