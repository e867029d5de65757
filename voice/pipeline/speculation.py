"""Speculative ASR: transcribe an utterance while its speaker is still (maybe) pausing.

At a short pause the listener reports the utterance so far (``Pause``); transcribing it at once
hides most of the ASR time in the silence the turn would wait anyway. Three endings:

- the speaker goes on (``SpeechResumed``, a reset, a turn begun elsewhere): the transcription is
  ``discard``-ed; a call still queued never runs, one already running ends unheard;
- the full silence cuts the utterance: ``take`` hands the transcription (finished or still running)
  to the turn, so the turn makes no second ASR call;
- the transcription is ready before the full silence, its words do not trail off, and the
  end-of-turn model (``judge``) hears a finished turn (``end_of_turn.ends_turn``): ``on_end`` is
  called with the utterance and its transcript, and the turn starts before the full silence.

The model is asked once the words are known to look complete, which spares its CPU on pauses whose
words trail off; or, with ``judge_with_asr``, at the pause beside the ASR, so the turn waits for the
slower of the two rather than their sum. That pays only where the two do not share the same cores
(a hosted ASR, a bigger machine): on 2 cores the bundled Whisper ran slower by the model's time.

One speculation at a time per session; its tasks are owned here until a turn takes the transcript.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from voice import live_stats
from voice.pipeline.end_of_turn import ends_turn, words_look_complete
from voice.pipeline.listener import Pause, Utterance

log = logging.getLogger(__name__)


@dataclass
class Transcript:
    """A finished (or running) transcription a turn can use instead of calling ASR itself."""

    task: asyncio.Task  # -> str
    started: float  # time.monotonic() the call was made
    finished: float | None = None  # time.monotonic() it returned


async def _no_opinion(utterance: Utterance) -> float | None:
    return None


class SpeculativeASR:
    def __init__(self, transcribe: Callable[[Utterance], Awaitable[str]],
                 on_end: Callable[[Utterance, Transcript], None], *,
                 judge: Callable[[Utterance], Awaitable[float | None]] = _no_opinion, threshold: float = 0.5,
                 has_room: Callable[[], bool] = lambda: True, judge_with_asr: bool = False):
        """``transcribe``: the ASR call; ``on_end``: start the turn now (the pause ended it);
        ``judge``: the end-of-turn model's probability that the speaker has finished (None: no
        opinion); ``has_room``: whether the ASR has a free slot now. Speculation only uses idle
        capacity: with others waiting, a guess that may be thrown away must not delay their turns."""
        self._transcribe = transcribe
        self._on_end = on_end
        self._judge = judge
        self._has_room = has_room
        self.threshold = threshold
        self.judge_with_asr = judge_with_asr
        self._pause: Pause | None = None
        self._current: Transcript | None = None
        self._judging: asyncio.Task | None = None

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
        task.add_done_callback(lambda t, current=self._current: self._transcribed(current))
        if self.judge_with_asr:
            self._judging = asyncio.create_task(self._decide(pause, self._current), name="end-of-turn")

    def _transcribed(self, transcript: Transcript) -> None:
        transcript.finished = time.monotonic()
        if self.judge_with_asr or transcript is not self._current or not _succeeded(transcript.task):
            return
        if words_look_complete(transcript.task.result()):  # only then can the model end the turn
            self._judging = asyncio.create_task(self._decide(self._pause, transcript), name="end-of-turn")

    async def _decide(self, pause: Pause, transcript: Transcript) -> None:
        try:
            probability = await self._judge(pause.utterance)
        except Exception as exc:  # noqa: BLE001 - the model is an optimisation: silence still ends the turn
            live_stats.incr("errors:end_of_turn")
            log.info("end-of-turn model failed: %s", exc)
            return
        if probability is None or probability < self.threshold:
            return  # not the end, whatever the words: the full silence decides
        # Asked beside the ASR: its text may still be coming. Waited for, not awaited: cancelling
        # this decision (speech resumed) must not cancel a transcription the full silence may take.
        await asyncio.wait({transcript.task})
        if transcript is not self._current or not _succeeded(transcript.task):
            return  # speech resumed, or the full silence took it, while the model ran; or the ASR failed
        if ends_turn(probability, transcript.task.result(), self.threshold):
            self._pause = self._current = self._judging = None
            live_stats.incr("end_of_turn_early")
            self._on_end(pause.utterance, transcript)

    def take(self) -> Transcript | None:
        """The full silence cut the paused utterance (no voice since): its transcription, if any."""
        transcript, self._pause, self._current = self._current, None, None
        self._stop_judging()
        if transcript is not None:
            live_stats.incr("speculative_asr_used")
        return transcript

    def discard(self) -> None:
        """The speaker went on, or the session moved on: forget the speculation, stop its call."""
        transcript, self._pause, self._current = self._current, None, None
        self._stop_judging()
        if transcript is not None:
            if not transcript.task.done():
                transcript.task.cancel()
            live_stats.incr("speculative_asr_discarded")

    def _stop_judging(self) -> None:
        judging, self._judging = self._judging, None
        if judging is not None and not judging.done() and judging is not asyncio.current_task():
            judging.cancel()


def _succeeded(task: asyncio.Task) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


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
