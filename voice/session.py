"""One device connection's conversation: idle / listening / thinking / speaking.

The consumer hands every frame here and returns at once; the session routes it and owns the tasks
that act on it: the input task (decode + VAD on the VAD worker, a batch of packets at a time), at
most one turn task, the pacer, and the watchdogs (``voice/watchdogs.py``). ``abort``, barge-in and
disconnect cancel the turn task; the pacer then drops queued audio and sends ``tts stop`` exactly
once. Whether the device is speaking is the pacer's to say (it sent ``tts start``); the session
keeps only what it does itself (listening, thinking). Sessions hold only their own state: models
and worker pools are shared by the whole process.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from voice import live_stats
from voice.activation import ActivationPrompt
from voice.pipeline.listener import Listener, SpeechStarted, Utterance
from voice.pipeline.packet_queue import PacketQueue
from voice.pipeline.pacer import Pacer
from voice.pipeline.turn import TurnDeps, TurnRecord, prefill_next_turn, run_turn
from voice.protocol import (
    SUPPORTED_AUDIO_FORMATS,
    Abort,
    Alert,
    AudioParams,
    BinaryFraming,
    CloseCode,
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
from voice.providers import registry
from voice.watchdogs import IdleWatch, watch_hello
from voice.workers import ServiceBusy, ServiceTimeout
from voice.workers import services as default_services
from voice.workers.vad_batcher import hear

log = logging.getLogger(__name__)

MAX_PENDING_PACKETS = 200  # ~12 s of 60 ms audio waiting for the VAD worker; older packets are dropped
MAX_BAD_FRAMES = 20  # consecutive undecodable frames before the socket is closed


class SessionState(str, Enum):
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


IDLE, LISTENING, THINKING, SPEAKING = SessionState.IDLE, SessionState.LISTENING, SessionState.THINKING, SessionState.SPEAKING


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
    llm_model: str | None = None  # for LLMs that serve several models (openai); None: the provider's own
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
    def __init__(self, transport: Transport, config: SessionConfig, on_turn: TurnCallback | None = None,
                 *, services: dict | None = None):
        """``services``: the dispatch seam's services to call (default: the process's ``services()``)."""
        self.transport = transport
        self.config = config
        self.on_turn = on_turn
        self.services = services
        self.mode = "auto"
        self.framing: BinaryFraming | None = None  # set by hello
        self.closed = False
        # What the session is doing besides speaking (which the pacer knows): see ``state``.
        self._phase = IDLE
        self.pacer = Pacer(transport.send_text, self._send_audio, lead_frames=config.pacer_lead_frames,
                           on_reply_ended=self._back_to_listening)
        self.listener = Listener(
            registry.get_vad(),
            silence_ms=config.vad_silence_ms,
            threshold=config.vad_threshold,
            max_seconds=config.max_utterance_seconds,
        )
        self.history: collections.deque = collections.deque(maxlen=config.history_turns)
        self.idle = IdleWatch(config.idle_timeout, activated=config.activated,
                              unbound_session_seconds=config.unbound_session_seconds)
        self.activation = ActivationPrompt(config.activation_code)
        self._pending = PacketQueue(MAX_PENDING_PACKETS)
        self._audio_ready = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._turn: asyncio.Task | None = None
        self._bad_frames = 0

    @property
    def state(self) -> SessionState:
        """Speaking while the pacer has a reply open (``tts start`` sent, ``tts stop`` not yet),
        as the device is; otherwise idle, listening or thinking (a turn on its way to a reply)."""
        return SPEAKING if self.pacer.speaking else self._phase

    @property
    def _resting(self) -> SessionState:
        """Where a finished or aborted turn leaves the session: auto and realtime listen on."""
        return LISTENING if self.mode in ("auto", "realtime") else IDLE

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(watch_hello(self.config.hello_timeout, lambda: self.framing is not None, self._close_socket),
                    "hello-watchdog")
        self._spawn(self.idle.run(lambda: self.state in (THINKING, SPEAKING), self._close_socket), "idle-watchdog")
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
        self.idle.touch()

    # -- frames from the consumer -----------------------------------------------------------------------
    async def handle_text(self, text: str | bytes) -> None:
        if self.closed:
            return  # queued behind a close of our own (bad frames, takeover, a watchdog): nothing to act on
        try:
            message = parse_device_message(text)
        except ProtocolError as exc:
            live_stats.incr(f"errors:bad_text:{exc.kind}")
            log.info("device %s sent a bad message (%s): %s", self.config.device_id, exc.kind, exc)
            if exc.kind == "too_large":
                self._count_bad_frame(exc)
            return
        if isinstance(message, Hello):
            await self._on_hello(message)
        elif self.framing is None:
            return  # nothing but hello counts until hello
        elif isinstance(message, Listen):
            await self._on_listen(message)
        elif isinstance(message, Abort):
            await self.abort(message.reason or "abort")
        elif isinstance(message, Ping):
            await self.transport.send_text(encode(Pong()))
        # mcp and legacy iot messages are accepted and ignored for now

    def handle_binary(self, data: bytes) -> None:
        """Queue one uplink frame; never waits (the VAD worker drains the queue in batches)."""
        if self.framing is None or self.closed:
            return
        try:
            frame = self.framing.decode(data)
        except FrameError as exc:
            live_stats.incr(f"errors:bad_frame:{exc.kind}")
            self._count_bad_frame(exc)
            return
        self._bad_frames = 0
        if frame.kind == "json":  # v2/v3 type 1: a JSON message carried in a binary frame
            self._spawn(self.handle_text(frame.payload), "binary-json")
            return
        state = self.state
        if state == LISTENING or (self.mode == "realtime" and state in (THINKING, SPEAKING)):
            self._pending.put(frame.payload, time.monotonic())  # a full queue drops its oldest (counted there)
            self._audio_ready.set()

    def _count_bad_frame(self, exc: ProtocolError) -> None:
        """A bad frame is dropped; a run of them means a broken or hostile client: close."""
        self._bad_frames += 1
        if self._bad_frames == MAX_BAD_FRAMES:
            code = CloseCode.TOO_BIG if exc.kind == "too_large" else CloseCode.BAD_DATA
            self._spawn(self._close_socket(code, f"too many bad frames ({exc.kind})"), "close")

    # -- messages -----------------------------------------------------------------------------------------
    async def _on_hello(self, hello: Hello) -> None:
        fmt = hello.audio_params.format if hello.audio_params else "opus"
        if fmt not in SUPPORTED_AUDIO_FORMATS:
            # Told why, in words the device shows, then closed: its audio could never be heard.
            await self.transport.send_text(encode(Alert(
                "error", f"Unsupported audio format {fmt!r}: this server speaks {', '.join(SUPPORTED_AUDIO_FORMATS)}", "sad")))
            await self._close_socket(CloseCode.UNSUPPORTED, f"unsupported audio format {fmt!r}")
            return
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
            self._phase = LISTENING
            if not self.config.activated:
                await self.activation.say(self._deps())
        elif listen.state == "stop":
            if self.state == LISTENING:
                await self._drain_input()
                utterance = self.listener.finish()
                if utterance is not None:
                    self._start_turn(utterance)
                elif self.mode == "manual":
                    self._phase = IDLE
        elif listen.state == "detect":
            # The wake word itself was just streamed: do not answer it as a question.
            self.listener.reset()
            self._pending.clear()

    async def abort(self, reason: str) -> None:
        turn, self._turn = self._turn, None
        if turn and not turn.done():
            turn.cancel()  # the turn keeps what was heard of its reply (``run_turn``)
            await asyncio.wait({turn}, timeout=1.0)  # never let a slow unwind delay the stop
        playback = await self.pacer.interrupt()
        self._back_to_listening()
        live_stats.incr("aborts")
        log.info("session %s: turn aborted (%s) after %.2f s of its reply", self.config.session_id, reason,
                 playback.played_seconds)

    def _back_to_listening(self) -> None:
        """The reply ended (``tts stop`` sent) or a turn ended without one: like the device, back to
        listening (auto, realtime) or idle (manual), with nothing half-heard kept."""
        self._phase = self._resting
        self.listener.reset()
        self._pending.clear()

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
        live_stats.incr("audio_lost", len(batch))
        live_stats.incr(f"errors:vad:{type(exc).__name__}")
        log.warning("session %s: %d audio packets lost: %s", self.config.session_id, len(batch), exc)

    # -- turns ------------------------------------------------------------------------------------------------
    def _start_turn(self, utterance: Utterance) -> None:
        self.touch()
        if not self.config.activated:
            self._turn = self._spawn(self.activation.say(self._deps(), force=True), "activation")
            return
        now_loop = asyncio.get_running_loop().time()
        ago = time.monotonic() - utterance.speech_end
        record = TurnRecord(speech_end=now_loop - ago, speech_end_wall=time.time() - ago)
        self._phase = THINKING
        self._turn = self._spawn(self._turn_task(utterance, record), "turn")

    def _deps(self) -> TurnDeps:
        return TurnDeps(
            services=self.services or default_services(),
            asr=registry.resolve("asr", self.config.asr_provider),
            llm=registry.resolve("llm", self.config.llm_provider),
            tts=registry.resolve("tts", self.config.tts_provider),
            pacer=self.pacer,
            send_text=self.transport.send_text,
            output_rate=self.config.output_sample_rate,
            system_prompt=self.config.system_prompt,
            voice=self.config.voice,
            history=self.history,
            device_id=self.config.device_id,
            llm_model=self.config.llm_model,
        )

    async def _turn_task(self, utterance: Utterance, record: TurnRecord) -> None:
        deps = self._deps()
        live_stats.gauge_add("active_turns", 1)
        try:
            await run_turn(deps, utterance, record)
            if not record.error:
                self._spawn(prefill_next_turn(deps), "prefill")
        except asyncio.CancelledError:
            record.error = record.error or live_stats.ABORTED
            raise
        finally:
            if self._turn is asyncio.current_task():
                self._turn = None
                if self.state == THINKING:
                    self._back_to_listening()  # ended without a reply (nothing intelligible was heard)
            live_stats.gauge_add("active_turns", -1)
            if record.user_text:
                live_stats.turn_finished(record.as_row())
            if self.on_turn and record.user_text:
                self._spawn(self.on_turn(record), "record-turn")

    # -- output -----------------------------------------------------------------------------------------------
    async def _send_audio(self, frame: bytes) -> None:
        await self.transport.send_bytes(self.framing.encode(frame) if self.framing else frame)
