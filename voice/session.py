"""One device connection's conversation: idle / listening / thinking / speaking.

The consumer hands every frame here and returns at once. The session owns three kinds of task:
the input task (decode + VAD on the VAD worker, a batch of packets at a time), at most one turn
task, and the pacer. ``abort``, barge-in and disconnect cancel the turn task; the pacer then drops
queued audio and sends ``tts stop`` exactly once. Sessions hold only their own state: models and
worker pools are shared by the whole process.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from voice.pipeline.listener import Listener, SpeechStarted, Utterance
from voice.pipeline.packet_queue import PacketQueue
from voice.workers.vad_batcher import hear
from voice.pipeline.pacer import Pacer
from voice.pipeline.turn import TurnDeps, TurnRecord, prefill_next_turn, run_turn, speak
from voice.protocol import (
    CloseCode,
    Abort,
    AudioParams,
    BinaryFraming,
    FrameError,
    Hello,
    Listen,
    Ping,
    Pong,
    ProtocolError,
    ServerHello,
    encode,
    negotiate_binary_version,
    parse_device_message,
)
from voice import live_stats
from voice.providers import registry
from voice.workers import ServiceBusy, ServiceTimeout, services

log = logging.getLogger(__name__)

IDLE, LISTENING, THINKING, SPEAKING = "idle", "listening", "thinking", "speaking"
MAX_PENDING_PACKETS = 200  # ~12 s of 60 ms audio waiting for the VAD worker; older packets are dropped
MAX_BAD_FRAMES = 20  # consecutive undecodable frames before the socket is closed
ACTIVATION_PROMPT_EVERY = 30.0

@dataclass
class SessionConfig:
    device_id: str
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    protocol_version_header: str | None = None
    activated: bool = True
    activation_code: str | None = None
    system_prompt: str = ""
    voice: str | None = None
    asr_provider: str | None = None
    llm_provider: str | None = None
    tts_provider: str | None = None
    output_sample_rate: int = 24000
    hello_timeout: float = 10.0
    idle_timeout: float = 120.0
    unbound_session_seconds: float = 180.0
    vad_silence_ms: int = 500
    vad_threshold: float = 0.5
    max_utterance_seconds: float = 30.0
    history_turns: int = 6
    pacer_lead_frames: int = 2

    @classmethod
    def from_settings(cls, **values) -> SessionConfig:
        from django.conf import settings

        return cls(
            output_sample_rate=settings.XIAOZHI_OUTPUT_SAMPLE_RATE,
            hello_timeout=settings.XIAOZHI_HELLO_TIMEOUT_SECONDS,
            idle_timeout=settings.XIAOZHI_IDLE_TIMEOUT_SECONDS,
            unbound_session_seconds=settings.XIAOZHI_UNBOUND_SESSION_SECONDS,
            vad_silence_ms=settings.XIAOZHI_VAD_SILENCE_MS,
            vad_threshold=settings.XIAOZHI_VAD_THRESHOLD,
            max_utterance_seconds=settings.XIAOZHI_MAX_UTTERANCE_SECONDS,
            history_turns=settings.XIAOZHI_HISTORY_TURNS,
            pacer_lead_frames=settings.XIAOZHI_PACER_LEAD_FRAMES,
            system_prompt=settings.XIAOZHI_SYSTEM_PROMPT,
            **values,
        )


class Transport:
    """What the session needs from its socket (the consumer, or a test double)."""

    send_text: Callable[[str], Awaitable[None]]
    send_bytes: Callable[[bytes], Awaitable[None]]
    close: Callable[[int, str], Awaitable[None]]


TurnCallback = Callable[[TurnRecord], Awaitable[None]]


class VoiceSession:
    def __init__(self, transport: Transport, config: SessionConfig, on_turn: TurnCallback | None = None):
        self.transport = transport
        self.config = config
        self.on_turn = on_turn
        self.state = IDLE
        self.mode = "auto"
        self.framing: BinaryFraming | None = None  # set by hello
        self.closed = False
        self.counters = collections.Counter()
        self.pacer = Pacer(
            transport.send_text, self._send_audio, lead_frames=config.pacer_lead_frames, on_speaking=self._on_speaking
        )
        self.listener = Listener(
            registry.get_vad(),
            silence_ms=config.vad_silence_ms,
            threshold=config.vad_threshold,
            max_seconds=config.max_utterance_seconds,
        )
        self.history: collections.deque = collections.deque(maxlen=config.history_turns)
        self._pending = PacketQueue(MAX_PENDING_PACKETS)
        self._audio_ready = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._turn: asyncio.Task | None = None
        self._bad_frames = 0
        self._last_activity = time.monotonic()
        self._last_prompt = 0.0
        self._started = time.monotonic()

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(self._hello_watchdog(), "hello-watchdog")
        self._spawn(self._idle_watchdog(), "idle-watchdog")
        self._spawn(self._input_loop(), "input")

    async def close(self, reason: str = "") -> None:
        """Cancel everything this session owns; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        if self._turn:
            self._turn.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.pacer.close()
        log.info("session %s closed (%s)", self.config.session_id, reason or "disconnect")

    async def _close_socket(self, code: int, reason: str) -> None:
        if not self.closed:
            log.info("closing session %s: %s (%d)", self.config.session_id, reason, code)
            await self.close(reason)
            await self.transport.close(code, reason)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{name}:{self.config.session_id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def touch(self) -> None:
        self._last_activity = time.monotonic()

    # -- frames from the consumer -----------------------------------------------------------------------
    async def handle_text(self, text: str) -> None:
        try:
            message = parse_device_message(text)
        except ProtocolError as exc:
            self.counters[f"bad_text:{exc.kind}"] += 1
            live_stats.incr(f"errors:bad_text:{exc.kind}")
            log.info("device %s sent a bad message (%s): %s", self.config.device_id, exc.kind, exc)
            if exc.kind == "too_large":
                self._count_bad_frame(exc)
            return
        if isinstance(message, Hello):
            await self._on_hello(message)
        elif self.framing is None:
            self.counters["before_hello"] += 1  # nothing but hello counts until hello
        elif isinstance(message, Listen):
            await self._on_listen(message)
        elif isinstance(message, Abort):
            await self.abort(message.reason or "abort")
        elif isinstance(message, Ping):
            await self.transport.send_text(encode(Pong()))
        # mcp and legacy iot messages are accepted and ignored for now

    def handle_binary(self, data: bytes) -> None:
        """Queue one uplink frame; never waits (the VAD worker drains the queue in batches)."""
        if self.framing is None:
            self.counters["audio_before_hello"] += 1
            return
        try:
            frame = self.framing.decode(data)
        except FrameError as exc:
            self.counters[f"bad_frame:{exc.kind}"] += 1
            live_stats.incr(f"errors:bad_frame:{exc.kind}")
            self._count_bad_frame(exc)
            return
        self._bad_frames = 0
        if frame.kind != "audio":
            return
        if self.state == LISTENING or (self.mode == "realtime" and self.state in (THINKING, SPEAKING)):
            if not self._pending.put(frame.payload, time.monotonic()):
                self.counters["audio_dropped"] += 1
            self._audio_ready.set()
        else:
            self.counters["audio_ignored"] += 1

    def _count_bad_frame(self, exc: ProtocolError) -> None:
        """A bad frame is dropped; a run of them means a broken or hostile client: close."""
        self._bad_frames += 1
        if self._bad_frames == MAX_BAD_FRAMES:
            code = CloseCode.TOO_BIG if exc.kind == "too_large" else CloseCode.BAD_DATA
            self._spawn(self._close_socket(code, f"too many bad frames ({exc.kind})"), "close")

    # -- messages -----------------------------------------------------------------------------------------
    async def _on_hello(self, hello: Hello) -> None:
        version = negotiate_binary_version(self.config.protocol_version_header, hello.version)
        self.framing = BinaryFraming(version)
        params = AudioParams("opus", self.config.output_sample_rate, 1, 60)
        await self.transport.send_text(encode(ServerHello(self.config.session_id, params, version=version)))
        self.touch()

    async def _on_listen(self, listen: Listen) -> None:
        self.touch()
        if listen.state == "start":
            if self.state in (THINKING, SPEAKING):
                await self.abort("listen start while speaking")
            self.mode = listen.mode or "auto"
            self.listener.reset(self.mode)
            self._pending.clear()
            self.state = LISTENING
            if not self.config.activated:
                await self._prompt_activation()
        elif listen.state == "stop":
            if self.state == LISTENING:
                await self._drain_input()
                utterance = self.listener.finish()
                if utterance is not None:
                    self._start_turn(utterance)
                elif self.mode == "manual":
                    self.state = IDLE
        elif listen.state == "detect":
            # The wake word itself was just streamed: do not answer it as a question.
            self.listener.reset()
            self._pending.clear()

    async def abort(self, reason: str) -> None:
        turn, self._turn = self._turn, None
        if turn and not turn.done():
            turn.cancel()
            await asyncio.wait({turn}, timeout=1.0)  # never let a slow unwind delay the stop
        await self.pacer.interrupt()
        self.listener.reset()
        self._pending.clear()
        self.state = LISTENING if self.mode in ("auto", "realtime") else IDLE
        self.counters["aborts"] += 1
        live_stats.incr("aborts")
        log.info("session %s: turn aborted (%s)", self.config.session_id, reason)

    # -- input: decode + VAD off the loop -------------------------------------------------------------------
    async def _input_loop(self) -> None:
        try:
            while True:
                await self._audio_ready.wait()
                await self._drain_input()
        finally:
            self._pending.clear()  # the backlog gauge must not keep a closed session's packets

    async def _drain_input(self) -> None:
        """Hand everything queued to the VAD (``vad_batcher.hear``) and act on what it heard. A
        busy or timed-out VAD loses this batch (counted, logged) but never the session."""
        self._audio_ready.clear()
        if not self._pending:
            return
        batch = self._pending.take_all()
        try:
            events = await hear(self.listener, batch, owner=self.config.device_id)
        except (ServiceBusy, ServiceTimeout) as exc:
            self._lost_audio(batch, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a VAD failure must not end the session's hearing
            log.exception("session %s: VAD failed", self.config.session_id)
            self._lost_audio(batch, exc)
            return
        live_stats.observe("vad_lag_ms", (time.monotonic() - batch[0][1]) * 1000)
        live_stats.incr("vad_packets", len(batch))
        for event in events:
            if isinstance(event, SpeechStarted):
                self.touch()
                if self.mode == "realtime" and self.state in (THINKING, SPEAKING):
                    await self.abort("barge-in")
            elif isinstance(event, Utterance) and self.state == LISTENING:
                self._start_turn(event)

    def _lost_audio(self, batch: list, exc: Exception) -> None:
        self.counters["audio_lost"] += len(batch)
        live_stats.incr("audio_lost", len(batch))
        live_stats.incr(f"errors:vad:{type(exc).__name__}")
        log.warning("session %s: %d audio packets lost: %s", self.config.session_id, len(batch), exc)

    # -- turns ------------------------------------------------------------------------------------------------
    def _start_turn(self, utterance: Utterance) -> None:
        self.touch()
        now_loop = asyncio.get_running_loop().time()
        ago = time.monotonic() - utterance.speech_end
        record = TurnRecord(speech_end=now_loop - ago, speech_end_wall=time.time() - ago)
        if not self.config.activated:
            self._turn = self._spawn(self._prompt_activation(force=True), "activation")
            return
        self.state = THINKING
        self._turn = self._spawn(self._turn_task(utterance, record), "turn")

    def _deps(self) -> TurnDeps:
        from django.conf import settings

        return TurnDeps(
            services=services(),
            asr=self.config.asr_provider or settings.XIAOZHI_ASR_PROVIDER,
            llm=self.config.llm_provider or settings.XIAOZHI_LLM_PROVIDER,
            tts=self.config.tts_provider or settings.XIAOZHI_TTS_PROVIDER,
            pacer=self.pacer,
            send_text=self.transport.send_text,
            output_rate=self.config.output_sample_rate,
            system_prompt=self.config.system_prompt,
            voice=self.config.voice,
            history=self.history,
            device_id=self.config.device_id,
        )

    async def _turn_task(self, utterance: Utterance, record: TurnRecord) -> None:
        deps = self._deps()
        live_stats.gauge_add("active_turns", 1)
        try:
            await run_turn(deps, utterance, record)
            if not record.error:
                self._spawn(prefill_next_turn(deps), "prefill")
        except asyncio.CancelledError:
            record.error = record.error or "aborted"
            raise
        finally:
            if self._turn is asyncio.current_task():
                self._turn = None
                if self.state == THINKING:  # ended without a reply (nothing intelligible was heard)
                    self._on_speaking(False)
            live_stats.gauge_add("active_turns", -1)
            if record.user_text:
                live_stats.turn_finished(record.as_row())
            if self.on_turn and record.user_text:
                self._spawn(self.on_turn(record), "record-turn")

    async def _prompt_activation(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_prompt < ACTIVATION_PROMPT_EVERY:
            return
        self._last_prompt = now
        digits = " ".join(self.config.activation_code or "")
        text = f"This device is not activated yet. Please enter the code {digits} in the admin console."
        try:
            await speak(self._deps(), text)
        except Exception as exc:  # noqa: BLE001
            log.warning("activation prompt failed: %s", exc)
            await self.pacer.interrupt()

    # -- output -----------------------------------------------------------------------------------------------
    def _on_speaking(self, speaking: bool) -> None:
        """Follow the device: ``tts start`` puts it in speaking, ``tts stop`` back to listening
        (auto, realtime) or idle (manual)."""
        if speaking:
            self.state = SPEAKING
        else:
            self.state = LISTENING if self.mode in ("auto", "realtime") else IDLE
            self.listener.reset()
            self._pending.clear()

    async def _send_audio(self, frame: bytes) -> None:
        await self.transport.send_bytes(self.framing.encode(frame) if self.framing else frame)

    # -- watchdogs ----------------------------------------------------------------------------------------------
    async def _hello_watchdog(self) -> None:
        await asyncio.sleep(self.config.hello_timeout)
        if self.framing is None:
            await self._close_socket(CloseCode.HELLO_TIMEOUT, "no hello")

    async def _idle_watchdog(self) -> None:
        limit = self.config.idle_timeout if self.config.activated else min(self.config.idle_timeout, self.config.unbound_session_seconds)
        while True:
            if not self.config.activated and time.monotonic() - self._started >= self.config.unbound_session_seconds:
                await self._close_socket(CloseCode.IDLE, "unbound session limit")
                return
            busy = self.state in (THINKING, SPEAKING)
            quiet_for = time.monotonic() - self._last_activity
            if not busy and quiet_for >= limit:
                await self._close_socket(CloseCode.IDLE, f"no voice for {limit:.0f} s")
                return
            await asyncio.sleep(max(min(limit - quiet_for, 5.0), 0.2) if not busy else 1.0)
