"""A scripted xiaozhi server: the server side of the protocol with fixed delays and audio timing.

For the load test's own tests (known TTFA, bursts, starvation) and for checking the generator's
own capacity without a real server's cost: ``python -m loadtest.tests.scripted --port 8765``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

from websockets.asyncio.server import serve

from voice.pipeline.turn import BUSY_REPLY

HELLO = {"type": "hello", "transport": "websocket", "session_id": "scripted",
         "audio_params": {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60}}


def paced(n, step=0.06, start=0.0):
    return [start + i * step for i in range(n)]


def paced_with_lead(n, lead=2):
    """As a real server's pacer sends: ``lead`` frames at once, then one every 60 ms."""
    return [0.0] * lead + paced(n - lead, start=0.06)


class ScriptedServer:
    """Answers each ``listen stop`` (manual mode) or the ``answer_after_frames``-th audio frame after
    ``listen start`` (auto mode) with stt after ``stt`` s, tts start ``tts_start`` s later, then
    audio frames at ``frame_offsets`` (s after the first, which comes ``first_audio`` s later),
    ``tts sentence_end`` and an unknown message (a device must tolerate both), and ``tts stop``.

    With ``slots``, it admits as the real server's ASR does: ``slots`` requests served at once for
    ``service`` s each (before ``stt``), up to ``queue`` more waiting in arrival order, and any
    request beyond that answered at once with the server's busy notice (no ``stt``)."""

    def __init__(self, frame_offsets, stt=0.2, tts_start=0.1, first_audio=0.1, answer_after_frames=None,
                 slots=None, queue=0, service=0.0):
        self.frame_offsets = frame_offsets
        self.stt, self.tts_start, self.first_audio = stt, tts_start, first_audio
        self.answer_after_frames = answer_after_frames
        self.slots, self.queue, self.service = slots, queue, service
        self.in_service = 0
        self.semaphore: asyncio.Semaphore | None = None
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = None
        self.stop = None

    async def answer(self, ws):
        if self.slots is not None:
            if self.in_service >= self.slots + self.queue:
                await self.say_busy(ws)
                return
            self.in_service += 1
            try:
                async with self.semaphore:  # FIFO: waiters are served in arrival order
                    await asyncio.sleep(self.service)
            finally:
                self.in_service -= 1
        await asyncio.sleep(self.stt)
        await ws.send(json.dumps({"type": "stt", "text": "hello"}))
        await asyncio.sleep(self.tts_start)
        await ws.send(json.dumps({"type": "tts", "state": "start"}))
        await ws.send(json.dumps({"type": "tts", "state": "sentence_start", "text": "Hi."}))
        await ws.send(json.dumps({"type": "surprise", "x": 1}))
        await asyncio.sleep(self.first_audio)
        first = time.monotonic()
        for offset in self.frame_offsets:
            delay = first + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(b"\x01" * 40)
        await ws.send(json.dumps({"type": "tts", "state": "sentence_end", "text": "Hi."}))
        await ws.send(json.dumps({"type": "tts", "state": "stop"}))

    async def say_busy(self, ws):
        await ws.send(json.dumps({"type": "tts", "state": "start"}))
        await ws.send(json.dumps({"type": "tts", "state": "sentence_start", "text": BUSY_REPLY}))
        first = time.monotonic()
        for offset in paced_with_lead(10):
            await asyncio.sleep(max(0.0, first + offset - time.monotonic()))
            await ws.send(b"\x01" * 40)
        await ws.send(json.dumps({"type": "tts", "state": "stop"}))

    async def handler(self, ws):
        heard = None
        async for message in ws:
            if isinstance(message, bytes):
                if heard is not None:
                    heard += 1
                    if self.answer_after_frames and heard == self.answer_after_frames:
                        heard = None
                        await self.answer(ws)
                continue
            data = json.loads(message)
            if data.get("type") == "hello":
                await ws.send(json.dumps(HELLO))
            elif data.get("type") == "listen" and data.get("state") == "start":
                heard = 0
            elif data.get("type") == "listen" and data.get("state") == "stop":
                heard = None
                await self.answer(ws)

    async def serve(self, host="127.0.0.1", port=0):
        self.stop = asyncio.Event()
        self.semaphore = asyncio.Semaphore(self.slots or 1)
        async with serve(self.handler, host, port, compression=None) as server:
            self.port = list(server.sockets)[0].getsockname()[1]
            self.ready.set()
            await self.stop.wait()

    def __enter__(self):
        """Serve from a thread (a test's call_command runs its own event loop)."""
        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(self.serve()), daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "scripted server did not start"
        return f"ws://127.0.0.1:{self.port}/xiaozhi/v1/"

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--frames", type=int, default=40, help="answer audio frames, paced at 60 ms with a lead of 2")
    parser.add_argument("--answer-after-frames", type=int, default=20, help="auto mode: answer after this many frames")
    args = parser.parse_args()
    asyncio.run(ScriptedServer(paced_with_lead(args.frames), answer_after_frames=args.answer_after_frames).serve(port=args.port))
