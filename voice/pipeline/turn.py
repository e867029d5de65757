"""One conversation turn: utterance -> ASR -> ``stt`` -> LLM -> sentences -> TTS -> Opus -> pacer.

The LLM and the TTS run as two tasks joined by a small queue, so the second sentence is being
written while the first is spoken. Every stage's moment is marked relative to the end of speech;
``TurnRecord`` is filled as the turn goes, so an aborted or failed turn is still recorded with what
it reached; a reply cut off by abort, barge-in or disconnect is kept (record and history) as what
the device had played of it, marked interrupted. Whatever happens, an opened reply is closed with
``tts stop`` (by the caller for cancellation, here for errors), so the device never hangs in
``speaking``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass, field

from voice.pipeline.listener import Utterance
from voice.pipeline.pacer import Pacer
from voice.pipeline.sentences import SentenceSplitter, clean_for_speech
from voice.pipeline.tool_loop import ToolLoop, service_stream, session_toolset
from voice.pipeline.speculation import Transcript, speculative_text
from voice.pipeline.turn_row import MARKS, TurnRow
from voice.protocol import Llm, Stt, emotion_for, encode, strip_emoji
from voice.workers import ServiceBusy, ServiceTimeout, first_audio
from voice.workers.operations import pcm_bytes

log = logging.getLogger(__name__)

MAX_TOOL_CALLS_KEPT = 16  # tool calls a turn record keeps (max_steps x calls per step is at most 40)
MAX_TOOL_TEXT = 1000  # characters of a call's arguments or result kept in the record
BUSY_REPLY = "Sorry, I am busy right now. Please try again in a moment."
ERROR_REPLY = "Sorry, something went wrong. Please try again."


@dataclass
class TurnRecord:
    speech_end: float  # loop time
    speech_end_wall: float  # time.time() of the same moment
    user_text: str = ""
    reply_text: str = ""  # what the device played: the whole reply, or the heard part if interrupted
    error: str = ""
    interrupted: bool = False  # the reply was cut off while the device played it
    marks: dict[str, float] = field(default_factory=dict)  # loop times
    model_seconds: dict[str, float] = field(default_factory=dict)
    tool_calls: list = field(default_factory=list)  # the ToolSteps (voice.pipeline.tool_loop), filled as calls end
    end_conversation: bool = False  # a tool ended the conversation: the session closes after the reply

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, at if at is not None else asyncio.get_running_loop().time())

    def as_row(self) -> TurnRow:
        """Marks in ms after the end of speech, plus model run times, for storage and benchmarks."""
        from datetime import datetime, timezone

        marks = {f"{name}_ms": None if (at := self.marks.get(name)) is None else round((at - self.speech_end) * 1000, 1)
                 for name in MARKS}
        return TurnRow(
            user_text=self.user_text,
            reply_text=self.reply_text,
            error=self.error,
            interrupted=self.interrupted,
            speech_end_at=datetime.fromtimestamp(self.speech_end_wall, tz=timezone.utc),
            timings={f"{k}_model_ms": round(v * 1000, 1) for k, v in self.model_seconds.items()},
            tool_calls=tuple(_bounded_call(step.as_dict()) for step in self.tool_calls[:MAX_TOOL_CALLS_KEPT]),
            **marks,
        )


@dataclass
class TurnDeps:
    """What a turn needs from its session: the shared services, the providers' names (the model
    work runs as named operations, in this process or a worker's), per-session state."""

    services: dict
    asr: str  # provider names, as in voice.providers.registry
    llm: str
    tts: str
    pacer: Pacer
    send_text: object  # async callable(str)
    output_rate: int
    system_prompt: str
    voice: str | None
    history: deque  # (user, assistant) pairs, bounded by maxlen
    device_id: str | None = None  # the owner of the turn's calls (per-device limits)
    llm_model: str | None = None  # the model an LLM serving several should use (AgentConfig.llm_model)
    mcp: object = None  # the session's McpClient (voice/mcp), None for a device without MCP
    session_id: str = ""
    tool_max_steps: int = 3


async def speak(deps: TurnDeps, text: str, record: TurnRecord | None = None) -> None:
    """Say a fixed sentence (busy notice, apology, activation prompt) as a complete reply."""
    if not deps.pacer.reply_open:
        await deps.pacer.begin()
    await _synthesize_into_pacer(deps, text, record)
    await deps.pacer.end()
    await deps.pacer.wait_stopped()


async def _synthesize_into_pacer(deps: TurnDeps, text: str, record: TurnRecord | None) -> None:
    await deps.pacer.sentence(text)
    started = time.monotonic()
    first = True
    # A reply's first clause: generation in this process pauses until its first audio (``first_audio``).
    hold = first_audio.gate().hold() if record is not None and "tts_first_audio" not in record.marks else None
    # Resampled and Opus-encoded where the voice is synthesised: only finished frames come back.
    # Due when this device's playout runs dry (now, for a first sentence): sentences of several
    # answers playing at once are synthesised earliest deadline first.
    stream = deps.services["tts"].stream("tts_frames", deps.tts, text, deps.voice, deps.output_rate,
                                         owner=deps.device_id, deadline=deps.pacer.runs_dry_at())
    try:
        async with aclosing(stream):  # closed at once on abort, so the worker is freed
            async for frames in stream:
                if hold is not None:
                    hold.release()
                if first and record is not None:
                    record.mark("tts_first_audio")
                    record.model_seconds.setdefault("tts_first_audio", time.monotonic() - started)
                first = False
                for frame in frames:
                    await deps.pacer.audio(frame)
    finally:
        if hold is not None:
            hold.release()


async def run_turn(deps: TurnDeps, utterance: Utterance, record: TurnRecord, transcript: Transcript | None = None) -> None:
    """``transcript``: the utterance's speculative transcription (``voice/pipeline/speculation.py``), if any."""
    try:
        await _run(deps, utterance, record, transcript)
    except ServiceBusy as exc:
        record.error = f"busy: {exc}"
        log.warning("turn refused: %s", exc)
        await _apologise(deps, BUSY_REPLY)
    except (ServiceTimeout, Exception) as exc:  # noqa: BLE001 - any failure ends the turn cleanly
        record.error = f"{type(exc).__name__}: {exc}"
        log.warning("turn failed: %s", record.error, exc_info=not isinstance(exc, ServiceTimeout))
        await _apologise(deps, ERROR_REPLY)


async def _apologise(deps: TurnDeps, text: str) -> None:
    try:
        async with asyncio.timeout(10):
            await speak(deps, text)
    except Exception as exc:  # noqa: BLE001 - TTS itself may be what failed
        log.warning("could not speak the apology: %s", exc)
        await deps.pacer.interrupt()


async def _run(deps: TurnDeps, utterance: Utterance, record: TurnRecord, transcript: Transcript | None = None) -> None:
    text = await speculative_text(transcript, record) if transcript is not None else None
    if text is None:
        started = time.monotonic()
        text = await deps.services["asr"].call("transcribe", deps.asr, pcm_bytes(utterance.pcm), owner=deps.device_id)
        record.model_seconds["asr"] = time.monotonic() - started
        record.mark("asr_done")
    text = strip_emoji(text or "").strip()
    record.user_text = text
    if not clean_for_speech(text):
        return  # nothing intelligible: keep listening, say nothing
    await deps.send_text(encode(Stt(text)))
    await deps.pacer.begin()
    try:
        await _reply(deps, text, record)
    except asyncio.CancelledError:
        _keep_what_was_heard(deps, text, record)
        raise
    if deps.pacer.first_audio_at is not None:
        record.mark("first_audio_sent", deps.pacer.first_audio_at)
    deps.history.append((text, record.reply_text))


async def _reply(deps: TurnDeps, text: str, record: TurnRecord) -> None:
    """Write the reply (LLM) and speak it sentence by sentence, to its ``tts stop``."""
    sentences: asyncio.Queue = asyncio.Queue(maxsize=8)
    reply_parts: list[str] = []
    producer = asyncio.create_task(_write_reply(deps, text, record, sentences, reply_parts), name="llm")
    try:
        while (sentence := await sentences.get()) is not None:
            if "first_sentence" not in record.marks:
                record.mark("first_sentence")
                emotion, emoji = emotion_for("".join(reply_parts))
                await deps.pacer.text(encode(Llm(emotion, emoji)))
            await _synthesize_into_pacer(deps, sentence, record)
        await producer  # re-raises an LLM failure
    finally:
        producer.cancel()
    record.reply_text = "".join(reply_parts).strip()
    await deps.pacer.end()
    await deps.pacer.wait_stopped()


def _keep_what_was_heard(deps: TurnDeps, user_text: str, record: TurnRecord) -> None:
    """The turn is being cancelled (abort, barge-in, disconnect) with its reply open: the record
    and the history keep the part the device had played, so the next answer follows from what the
    user actually heard. Runs before the caller stores the record."""
    playback = deps.pacer.playback()
    if not playback.interrupted:
        return  # no reply had reached the device yet
    record.interrupted = True
    record.reply_text = playback.heard_text
    if playback.heard_text:
        deps.history.append((user_text, playback.heard_text))


def conversation(deps: TurnDeps) -> list[dict]:
    messages = [{"role": "system", "content": deps.system_prompt}]
    for user, assistant in deps.history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages


async def prefill_next_turn(deps: TurnDeps) -> None:
    """Pre-evaluate the conversation while the device plays the answer, if the LLM is idle (the
    operation is a no-op for LLMs that cannot prefill)."""
    service = deps.services["llm"]
    if not deps.history:
        return
    busy = service.occupancy()
    if busy["active"] or busy["queued"]:
        return  # other devices are waiting: their turns come first
    try:
        await service.call("prefill", deps.llm, conversation(deps), owner=deps.device_id)
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        log.debug("prefill skipped: %s", exc)


def _bounded_call(call: dict) -> dict:
    """A tool call as the record keeps it: long arguments or results are cut."""
    kept = dict(call)
    if len(str(kept.get("result", ""))) > MAX_TOOL_TEXT:
        kept["result"] = str(kept["result"])[:MAX_TOOL_TEXT] + " [cut]"
    if len(str(kept.get("arguments", ""))) > MAX_TOOL_TEXT:
        kept["arguments"] = {"cut": str(kept["arguments"])[:MAX_TOOL_TEXT]}
    return kept


async def _write_reply(deps: TurnDeps, user_text: str, record: TurnRecord, out: asyncio.Queue, parts: list[str]) -> None:
    messages = conversation(deps) + [{"role": "user", "content": user_text}]
    splitter = SentenceSplitter()
    started = time.monotonic()
    toolset = session_toolset(deps.mcp, deps.device_id, deps.session_id)
    loop: ToolLoop | None = None
    if toolset:
        # The LLM may call the device's and the server's tools before it answers in words.
        loop = ToolLoop(toolset, service_stream(deps.services["llm"], deps.llm, deps.device_id, deps.llm_model),
                        max_steps=deps.tool_max_steps)
        record.tool_calls = loop.steps  # the same list: an aborted turn keeps the calls it made
        stream = loop.reply(messages)
    else:  # tools off: the plain reply, exactly as before tools existed
        stream = deps.services["llm"].stream("reply_stream", deps.llm, messages, None, deps.llm_model,
                                             owner=deps.device_id)
    try:
        async with aclosing(stream):
            async for delta in stream:
                if not delta:
                    continue  # a heartbeat: the reply waits for its turn on the model (interleave.py)
                if "llm_first_token" not in record.marks:
                    record.mark("llm_first_token")
                    record.model_seconds["llm_first_token"] = time.monotonic() - started
                parts.append(delta)
                for sentence in splitter.feed(delta):
                    record.model_seconds.setdefault("llm_first_sentence", time.monotonic() - started)
                    await out.put(sentence)
        for sentence in splitter.flush():
            record.model_seconds.setdefault("llm_first_sentence", time.monotonic() - started)
            await out.put(sentence)
        record.model_seconds["llm_total"] = time.monotonic() - started
    finally:
        if loop is not None:
            record.end_conversation = loop.end_conversation
        await out.put(None)
