"""Sends a reply to the device at the pace it is played, and knows how much of it was heard.

The firmware drops audio that arrives before ``tts start`` or beyond its 40-frame queue, and small
boards choke on bursts, so audio leaves on a virtual clock: frame k of a reply is due at
``anchor + k * frame``, with the anchor set ``lead`` frames in the past so the device holds a small
cushion against jitter. Timing is measured against the anchor, not slept frame by frame, so sleep
jitter does not add up. When the queue runs dry (waiting for the next sentence) the clock is
re-anchored instead of bursting to "catch up". ``sentence_start`` and ``stop`` travel in-band, in
order; ``stop`` is sent when the device has played the last frame, not when it was sent.

The same clock says what the device has played by now (everything sent, minus the cushion still
in its buffer), so an interrupted reply can be kept as what the user actually heard: the sentences
whose audio had started playing (``Playback``).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from voice.protocol import Tts, encode

log = logging.getLogger(__name__)

MAX_SENTENCES = 256  # sentences of one reply remembered for ``Playback.heard_text``; later ones are not


# -- what the queue carries, in order ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Start:
    """Open a reply: ``tts start``, unless one is already open."""


@dataclass(frozen=True, slots=True)
class Text:
    """A JSON message for the device; ``sentence`` is the text a ``sentence_start`` announces."""

    message: str
    sentence: str | None = None


@dataclass(frozen=True, slots=True)
class Audio:
    frame: bytes


@dataclass(frozen=True, slots=True)
class Stop:
    """Close the reply with ``tts stop`` once the device has played everything before it."""


Item = Start | Text | Audio | Stop


@dataclass(frozen=True)
class Playback:
    """How much of the current reply the device has played (cf. livekit's PlaybackFinished)."""

    played_seconds: float
    interrupted: bool  # the reply was cut off before its end
    heard_text: str  # the sentences whose audio had started playing, joined


NOTHING_PLAYED = Playback(0.0, False, "")


class Pacer:
    def __init__(
        self,
        send_text: Callable[[str], Awaitable[None]],
        send_audio: Callable[[bytes], Awaitable[None]],
        *,
        frame_ms: int = 60,
        lead_frames: int = 2,
        max_queued: int = 600,
        on_reply_ended: Callable[[], None] | None = None,
    ):
        """``on_reply_ended`` is called when ``tts stop`` goes out for a reply that was open, at the
        end of the reply or on ``interrupt``."""
        self._send_text = send_text
        self._send_audio = send_audio
        self._on_reply_ended = on_reply_ended or (lambda: None)
        self.frame = frame_ms / 1000
        self.lead = lead_frames
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=max_queued)
        self._task: asyncio.Task | None = None
        self.reply_open = False  # ``tts start`` sent, ``tts stop`` not yet: the device is speaking
        self._anchor: float | None = None
        self._count = 0  # frames sent since the anchor
        self._played_before_anchor = 0  # frames of this reply sent (and played) before the anchor
        self._sentences: list[tuple[int, str]] = []  # (index of its first frame, text), this reply
        self._stopped = asyncio.Event()
        self._stopped.set()
        self.first_audio_at: float | None = None  # loop time of the reply's first frame sent
        self._queued_audio = 0  # frames waiting in the queue
        self._closed = False  # the session ended: nothing is queued or sent any more

    @property
    def speaking(self) -> bool:
        """Whether the device is in a reply (between ``tts start`` and ``tts stop``)."""
        return self.reply_open

    # -- producer side ---------------------------------------------------------------------------------
    async def begin(self) -> None:
        """Open a reply: queues ``tts start``, which the device needs before any audio."""
        if self._closed:
            return
        self._ensure_task()
        self._stopped.clear()
        self.first_audio_at = None
        await self._queue.put(Start())

    async def sentence(self, text: str) -> None:
        await self._put(Text(encode(Tts("sentence_start", text)), sentence=text))

    async def text(self, message: str) -> None:
        """Any JSON message that must reach the device in order with the audio."""
        await self._put(Text(message))

    async def audio(self, frame: bytes) -> None:
        if self._closed:
            return
        self._queued_audio += 1
        await self._queue.put(Audio(frame))

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
        await self._put(Stop())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def playback(self) -> Playback:
        """What the device has played of the open reply by now (by the virtual clock: frames sent
        minus the cushion it still holds). Nothing, if no reply is open."""
        if not self.reply_open:
            return NOTHING_PLAYED
        position = float(self._played_before_anchor)
        if self._anchor is not None:
            now = asyncio.get_running_loop().time()
            position += min(max((now - self._anchor) / self.frame - self.lead, 0.0), self._count)
        sent = self._played_before_anchor + self._count
        heard = [text for first, text in self._sentences if first < sent and first <= position]
        return Playback(round(position * self.frame, 3), True, " ".join(heard))

    async def interrupt(self) -> Playback:
        """Drop everything queued and, if a reply is open, send ``tts stop`` now (exactly once).
        Returns what the device had played of that reply."""
        playback = self.playback()
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
        return playback

    async def _put(self, item: Item) -> None:
        if not self._closed:  # after close no task takes from the queue: a put could wait for ever
            await self._queue.put(item)

    async def close(self) -> None:
        """For good: a reply a late caller tries after this (a handler that was awaiting when the
        session closed) is dropped, and no sending task is started again."""
        self._closed = True
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
            match await self._queue.get():
                case Audio(frame):
                    self._queued_audio -= 1
                    await self._send_frame(loop, frame)
                case Text(message, sentence):
                    if sentence is not None and len(self._sentences) < MAX_SENTENCES:
                        self._sentences.append((self._played_before_anchor + self._count, sentence))
                    await self._send_text(message)
                case Start():
                    self._reanchor(None)
                    if not self.reply_open:
                        self._played_before_anchor = 0
                        self._sentences = []
                        self.reply_open = True
                        await self._send_text(encode(Tts("start")))
                case Stop():
                    if self._anchor is not None:
                        played_at = self._anchor + (self._count + self.lead) * self.frame
                        await asyncio.sleep(max(played_at - loop.time(), 0))
                    await self._send_stop()
                    self._stopped.set()

    def _reanchor(self, anchor: float | None) -> None:
        """Restart the clock; everything sent before has been played (or is forgotten)."""
        self._played_before_anchor += self._count
        self._count = 0
        self._anchor = anchor

    async def _send_frame(self, loop: asyncio.AbstractEventLoop, frame: bytes) -> None:
        now = loop.time()
        due = None if self._anchor is None else self._anchor + self._count * self.frame
        # The device has played everything sent so far once ``now`` passes ``due + lead``.
        if due is None or now > due + (self.lead + 0.5) * self.frame:
            # First frame of a reply, or the queue ran dry: restart the clock with the lead.
            self._reanchor(now - self.lead * self.frame)
        elif due > now:
            await asyncio.sleep(due - now)
        await self._send_audio(frame)
        self._count += 1
        if self.first_audio_at is None:
            self.first_audio_at = loop.time()

    async def _send_stop(self) -> None:
        self.reply_open = False
        self._anchor = None
        self._on_reply_ended()
        await self._send_text(encode(Tts("stop")))
