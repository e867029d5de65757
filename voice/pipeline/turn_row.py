"""A finished turn as it is stored (``devices.records.record_turn``) and counted
(``voice.live_stats.turn_finished``): one typed row instead of a dict whose keys each reader had
to know. Built by ``TurnRecord.as_row()`` (``voice.pipeline.turn``); the fields are the ``Turn``
model's columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# The stages a turn marks on its way, in order; each is a ``<name>_ms`` field below.
MARKS = ("asr_done", "llm_first_token", "first_sentence", "tts_first_audio", "first_audio_sent")


@dataclass(frozen=True)
class TurnRow:
    user_text: str = ""
    reply_text: str = ""  # with ``interrupted``, the part of the reply the device played
    error: str = ""
    interrupted: bool = False  # the reply was cut short (abort, barge-in)
    speech_end_at: datetime | None = None  # wall clock, UTC
    # ms after the end of speech; None for a stage the turn did not reach
    asr_done_ms: float | None = None
    llm_first_token_ms: float | None = None
    first_sentence_ms: float | None = None
    tts_first_audio_ms: float | None = None
    first_audio_sent_ms: float | None = None
    timings: dict[str, float] = field(default_factory=dict)  # model run times, "<step>_model_ms"
    # The turn's tool calls, in order: {name, arguments, result, is_error, seconds} (bounded by the turn)
    tool_calls: tuple[dict, ...] = ()

    def latencies(self) -> dict[str, float]:
        """The stages reached, ``{"asr_done_ms": 210.5, ...}``: the figures live_stats samples."""
        return {f"{name}_ms": value for name in MARKS if (value := getattr(self, f"{name}_ms")) is not None}
