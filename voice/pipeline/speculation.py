"""Speculative ASR: transcribe an utterance while its speaker is still (maybe) pausing.

At a short pause the listener reports the utterance so far (``Pause``); transcribing it at once
hides most of the ASR time in the silence the turn would wait anyway. Three endings:

- the speaker goes on (``SpeechResumed``, a reset, a turn begun elsewhere): the transcription is
  ``discard``-ed; a call still queued never runs, one already running ends unheard;
- the full silence cuts the utterance: ``take`` hands the transcription (finished or still running)
  to the turn, so the turn makes no second ASR call;
- the transcription finishes first and the pause sounds and reads like a finished turn
  (``end_of_turn.ends_turn``): ``on_end`` is called with the utterance and its text, and the turn
  starts before the full silence.

One speculation at a time per session; its task is owned here until a turn takes it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from voice import live_stats
from voice.pipeline.end_of_turn import ends_turn
from voice.pipeline.listener import Pause, Utterance

log = logging.getLogger(__name__)


@dataclass
class Transcript:
    """A finished (or running) transcription a turn can use instead of calling ASR itself."""

    task: asyncio.Task  # -> str
    started: float  # time.monotonic() the call was made
    finished: float | None = None  # time.monotonic() it returned


class SpeculativeASR:
    def __init__(self, transcribe: Callable[[Utterance], Awaitable[str]],
                 on_end: Callable[[Utterance, Transcript], None], *, threshold: float = 0.5,
                 has_room: Callable[[], bool] = lambda: True):
        """``transcribe``: the ASR call; ``on_end``: start the turn now (the pause ended it);
        ``has_room``: whether the ASR has a free slot now. Speculation only uses idle capacity:
        with others waiting, a guess that may be thrown away must not delay their turns."""
        self._transcribe = transcribe
        self._has_room = has_room
        self._on_end = on_end
        self.threshold = threshold
        self._pause: Pause | None = None
        self._current: Transcript | None = None

    @property
    def pending(self) -> bool:
        return self._current is not None

    def on_pause(self, pause: Pause) -> None:
        self.discard()
        if not self._has_room():
            live_stats.incr("speculative_asr_skipped")
            return
        started = time.monotonic()
        task = asyncio.create_task(self._transcribe(pause.utterance), name="speculative-asr")
        self._pause, self._current = pause, Transcript(task, started)
        live_stats.incr("speculative_asr")
        task.add_done_callback(lambda t, current=self._current: self._finished(current))

    def _finished(self, transcript: Transcript) -> None:
        transcript.finished = time.monotonic()
        if transcript is not self._current or transcript.task.cancelled() or transcript.task.exception() is not None:
            return
        pause = self._pause
        if ends_turn(pause.probability, transcript.task.result(), self.threshold):
            self._pause = self._current = None
            live_stats.incr("end_of_turn_early")
            self._on_end(pause.utterance, transcript)

    def take(self) -> Transcript | None:
        """The full silence cut the paused utterance (no voice since): its transcription, if any."""
        transcript, self._pause, self._current = self._current, None, None
        if transcript is not None:
            live_stats.incr("speculative_asr_used")
        return transcript

    def discard(self) -> None:
        """The speaker went on, or the session moved on: forget the speculation, stop its call."""
        transcript, self._pause, self._current = self._current, None, None
        if transcript is not None and not transcript.task.done():
            transcript.task.cancel()
        if transcript is not None:
            live_stats.incr("speculative_asr_discarded")


async def speculative_text(transcript: Transcript, marks) -> str | None:
    """The speculative transcription's text for a turn, its ASR time and ``asr_done`` mark put on
    ``marks`` (the ``TurnRecord``); None if it failed, so the turn transcribes again itself."""
    try:
        text = await transcript.task
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. busy: the turn's own call decides what to say
        log.info("speculative ASR failed (%s); transcribing again", exc)
        return None
    finished = transcript.finished or time.monotonic()
    marks.model_seconds["asr"] = finished - transcript.started
    marks.mark("asr_done", asyncio.get_running_loop().time() - (time.monotonic() - finished))
    return text
