"""Sends a reply to the device at the pace it is played.

The firmware drops audio that arrives before ``tts start`` or beyond its 40-frame queue, and small
boards choke on bursts, so audio leaves on a virtual clock: frame k of a reply is due at
``anchor + k * frame``, with the anchor set ``lead`` frames in the past so the device holds a small
cushion against jitter. Timing is measured against the anchor, not slept frame by frame, so sleep
jitter does not add up. When the queue runs dry (waiting for the next sentence) the clock is
re-anchored instead of bursting to "catch up". ``sentence_start`` and ``stop`` travel in-band, in
order; ``stop`` is sent when the device has played the last frame, not when it was sent.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from voice.protocol import Tts, encode

log = logging.getLogger(__name__)

_START, _TEXT, _AUDIO, _STOP = range(4)


class Pacer:
    def __init__(
        self,
        send_text: Callable[[str], Awaitable[None]],
        send_audio: Callable[[bytes], Awaitable[None]],
        *,
        frame_ms: int = 60,
        lead_frames: int = 2,
        max_queued: int = 600,
        on_speaking: Callable[[bool], None] | None = None,
    ):
        self._send_text = send_text
        self._send_audio = send_audio
        self._on_speaking = on_speaking or (lambda speaking: None)
        self.frame = frame_ms / 1000
        self.lead = lead_frames
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=max_queued)
        self._task: asyncio.Task | None = None
        self.reply_open = False
        self._anchor: float | None = None
        self._count = 0
        self._stopped = asyncio.Event()
        self._stopped.set()
        self.first_audio_at: float | None = None  # loop time of the reply's first frame sent
        self.frames_sent = 0
        self.late_frames = 0  # frames that left more than a frame after their due time
        self._queued_audio = 0  # frames waiting in the queue

    # -- producer side ---------------------------------------------------------------------------------
    async def begin(self) -> None:
        """Open a reply: queues ``tts start``, which the device needs before any audio."""
        self._ensure_task()
        self._stopped.clear()
        self.first_audio_at = None
        await self._queue.put((_START, None))

    async def sentence(self, text: str) -> None:
        await self.text(encode(Tts("sentence_start", text)))

    async def text(self, message: str) -> None:
        """Any JSON message that must reach the device in order with the audio."""
        await self._queue.put((_TEXT, message))

    async def audio(self, frame: bytes) -> None:
        self._queued_audio += 1
        await self._queue.put((_AUDIO, frame))

    def runs_dry_at(self) -> float:
        """Loop time (= ``time.monotonic()``) at which the device will have played everything sent
        and queued so far: the deadline of the reply's next sentence (now, if nothing is playing)."""
        now = asyncio.get_running_loop().time()
        played = now
        if self._anchor is not None:
            played = max(now, self._anchor + (self._count + self.lead) * self.frame)
        return played + self._queued_audio * self.frame

    async def end(self) -> None:
        """Queue ``tts stop`` behind the audio; ``wait_stopped`` returns once it has been sent."""
        await self._queue.put((_STOP, None))

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def interrupt(self) -> None:
        """Drop everything queued and, if a reply is open, send ``tts stop`` now (exactly once)."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued_audio = 0
        if self.reply_open:
            await self._send_stop()
        self._stopped.set()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None
        self._stopped.set()

    # -- the sending task ------------------------------------------------------------------------------
    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="pacer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            kind, payload = await self._queue.get()
            if kind == _AUDIO:
                self._queued_audio -= 1
                await self._send_frame(loop, payload)
            elif kind == _TEXT:
                await self._send_text(payload)
            elif kind == _START:
                self._anchor = None
                if not self.reply_open:
                    self.reply_open = True
                    self._on_speaking(True)
                    await self._send_text(encode(Tts("start")))
            elif kind == _STOP:
                if self._anchor is not None:
                    played_at = self._anchor + (self._count + self.lead) * self.frame
                    await asyncio.sleep(max(played_at - loop.time(), 0))
                await self._send_stop()
                self._stopped.set()

    async def _send_frame(self, loop: asyncio.AbstractEventLoop, frame: bytes) -> None:
        now = loop.time()
        due = None if self._anchor is None else self._anchor + self._count * self.frame
        # The device has played everything sent so far once ``now`` passes ``due + lead``.
        if due is None or now > due + (self.lead + 0.5) * self.frame:
            # First frame of a reply, or the queue ran dry: restart the clock with the lead.
            self._anchor = now - self.lead * self.frame
            self._count = 0
        elif due > now:
            await asyncio.sleep(due - now)
        elif now - due > self.frame / 2:
            self.late_frames += 1  # eating into the device's cushion
        await self._send_audio(frame)
        self._count += 1
        self.frames_sent += 1
        if self.first_audio_at is None:
            self.first_audio_at = loop.time()

    async def _send_stop(self) -> None:
        self.reply_open = False
        self._anchor = None
        self._on_speaking(False)
        await self._send_text(encode(Tts("stop")))
