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
from voice.conf import mcp_limits
from voice.mcp import McpClient
from voice.pipeline import end_of_turn, phrase_cache
from voice.pipeline.energy_gate import GateSettings
from voice.pipeline.listener import Listener, Pause, SpeechResumed, SpeechStarted, Utterance
from voice.pipeline.packet_queue import PacketQueue
from voice.pipeline.pacer import Pacer
from voice.pipeline.speculation import SpeculativeASR, Transcript
from voice.pipeline.tool_loop import start_device_tools
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
    Mcp,
    Ping,
    Pong,
    ProtocolError,
    ServerHello,
    System,
    encode,
    negotiate_binary_version,
    parse_device_message,
)
from voice.providers import registry
from voice.tools.model import Tool, ToolResult
from voice.watchdogs import IdleWatch, watch_hello
from voice.workers import ServiceBusy, ServiceTimeout, vad_batcher
from voice.workers import services as default_services
from voice.workers.deadline_executor import FIRST
from voice.workers.operations import pcm_bytes
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
    wake_greeting: str = ""  # spoken on ``listen detect`` (AgentConfig.wake_greeting); blank: nothing
    output_sample_rate: int = 24000
    hello_timeout: float = 10.0
    idle_timeout: float = 120.0
    unbound_session_seconds: float = 180.0
    vad_silence_ms: int = 500
    vad_pause_ms: int = 200  # a pause this long starts speculative ASR and the end-of-turn check; 0: off
    end_of_turn_threshold: float = 0.5
    end_of_turn_with_asr: bool = False  # the end-of-turn model is asked at the pause, beside the ASR
    vad_threshold: float = 0.5
    max_utterance_seconds: float = 30.0
    history_turns: int = 6
    pacer_lead_frames: int = 2
    mcp_with_user_tools: bool = False  # tools/list also lists the firmware's user-only tools
    tool_max_steps: int = 3  # tool rounds per turn before the LLM must answer in words
    # The vision endpoint ``{url, token}`` announced in MCP initialize (capabilities.vision), or
    # None: no vision provider. Set by the consumer once the vision service provides it.
    vision: dict | None = None

    @classmethod
    def from_settings(cls, **values) -> SessionConfig:
        from django.conf import settings

        return cls(
            output_sample_rate=settings.XIAOZHI_OUTPUT_SAMPLE_RATE,
            hello_timeout=settings.XIAOZHI_HELLO_TIMEOUT_SECONDS,
            idle_timeout=settings.XIAOZHI_IDLE_TIMEOUT_SECONDS,
            unbound_session_seconds=settings.XIAOZHI_UNBOUND_SESSION_SECONDS,
            vad_silence_ms=settings.XIAOZHI_VAD_SILENCE_MS,
            vad_pause_ms=settings.XIAOZHI_VAD_PAUSE_MS,
            end_of_turn_threshold=settings.XIAOZHI_END_OF_TURN_THRESHOLD,
            end_of_turn_with_asr=settings.XIAOZHI_END_OF_TURN_WITH_ASR,
            vad_threshold=settings.XIAOZHI_VAD_THRESHOLD,
            max_utterance_seconds=settings.XIAOZHI_MAX_UTTERANCE_SECONDS,
            history_turns=settings.XIAOZHI_HISTORY_TURNS,
            pacer_lead_frames=settings.XIAOZHI_PACER_LEAD_FRAMES,
            system_prompt=settings.XIAOZHI_SYSTEM_PROMPT,
            mcp_with_user_tools=settings.XIAOZHI_MCP_WITH_USER_TOOLS,
            tool_max_steps=settings.XIAOZHI_TOOL_MAX_STEPS,
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
            pause_ms=config.vad_pause_ms,
            gate=GateSettings.from_settings(),
        )
        self._turn_model = end_of_turn.load_model() if config.vad_pause_ms else None
        self.speculation = SpeculativeASR(self._transcribe, self._end_of_turn, judge=self._judge,
                                          threshold=config.end_of_turn_threshold, has_room=self._asr_has_room,
                                          judge_with_asr=config.end_of_turn_with_asr)
        self.history: collections.deque = collections.deque(maxlen=config.history_turns)
        self.idle = IdleWatch(config.idle_timeout, activated=config.activated,
                              unbound_session_seconds=config.unbound_session_seconds)
        self.activation = ActivationPrompt(config.activation_code)
        self._pending = PacketQueue(MAX_PENDING_PACKETS)
        self._audio_ready = asyncio.Event()
        # One batch at the VAD at a time: ``listen stop`` must hear the batch the input loop has
        # out before it takes the utterance, and a session's batches then stay in order.
        self._hearing = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._turn: asyncio.Task | None = None
        self._greeting: asyncio.Task | None = None  # the wake greeting, while it is the turn
        self._bad_frames = 0
        # The device's tools over MCP (voice/mcp): set by a hello with ``features.mcp``, else None.
        # The turn lists and calls its tools; the admin's actions call them by hand.
        self.mcp: McpClient | None = None

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
        if self.mcp is not None:
            self.mcp.close()  # a call in flight fails at once ("the device disconnected")
        current = asyncio.current_task()  # a task of ours closing the session (end_conversation) runs on
        if self._turn and self._turn is not current:
            self._turn.cancel()
        self.speculation.discard()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self.pacer.close()
        log.info("session %s closed (%s)", self.config.session_id, reason or "disconnect")

    async def _close_socket(self, code: int, reason: str) -> None:
        if not self.closed:
            log.info("closing session %s: %s (%d)", self.config.session_id, reason, code)
            await self.close(reason)
            await self.transport.close(code, reason)

    def _spawn(self, coro, name: str, *, after_close: bool = False) -> asyncio.Task:
        """``after_close``: work that must still happen when spawned after the close (the record of
        the turn the close cut); anything else spawned then (by a handler that was awaiting while
        the session closed) is cancelled at once, so nothing acts on the device after its close."""
        task = asyncio.create_task(coro, name=f"{name}:{self.config.session_id[:8]}")
        if self.closed and not after_close:
            task.cancel()
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
        elif isinstance(message, Mcp):
            if self.mcp is not None:
                self.mcp.handle(message.payload)
            else:
                live_stats.incr("errors:mcp:unexpected")
                log.info("device %s sent mcp without features.mcp in its hello: ignored", self.config.device_id)
        # legacy iot messages are accepted and ignored

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
            if not self._pending.put(frame.payload, time.monotonic()) and self.listener.hot:
                live_stats.incr("audio_dropped_hot")  # of a session whose speech matters (audio_dropped counts all)
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
        if hello.features.get("mcp") and self.mcp is None:
            self.mcp = McpClient(self._send_mcp, mcp_limits(), with_user_tools=self.config.mcp_with_user_tools,
                                 device=self.config.device_id)
            self._spawn(self._start_mcp(self.mcp), "mcp-start")

    async def _send_mcp(self, payload: dict) -> None:
        await self.transport.send_text(encode(Mcp(payload, self.config.session_id)))

    async def _start_mcp(self, mcp: McpClient) -> None:
        services = self.services or default_services()
        await start_device_tools(mcp, services["llm"], registry.resolve("llm", self.config.llm_provider),
                                 vision=self.config.vision, device_id=self.config.device_id,
                                 session_id=self.config.session_id)

    async def _on_listen(self, listen: Listen) -> None:
        self.touch()
        if listen.state == "start":
            # The firmware follows ``detect`` with ``listen start`` at once: that must not cut the greeting.
            greeting = self._greeting is not None and self._greeting is self._turn and not self._greeting.done()
            if self.state in (THINKING, SPEAKING) and not greeting:
                await self.abort("listen start while speaking")
            self.mode = listen.mode or "auto"
            self.listener.reset(self.mode)
            self.speculation.discard()
            self._pending.clear()
            self._phase = LISTENING
            if not self.config.activated:
                await self.activation.say(self._deps())
        elif listen.state == "stop":
            if self.state == LISTENING:
                await self._drain_input()
                utterance = self.listener.finish()
                if utterance is not None:
                    self._start_turn(utterance, self.speculation.take())
                elif self.mode == "manual":
                    self._phase = IDLE
        elif listen.state == "detect":
            # The wake word itself was just streamed: do not answer it as a question.
            self.listener.reset()
            self.speculation.discard()
            self._pending.clear()
            if self.config.wake_greeting and self.config.activated and self.state not in (THINKING, SPEAKING):
                self._turn = self._greeting = self._spawn(
                    phrase_cache.greet(self._deps(), self.config.wake_greeting), "greeting")

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
        self.speculation.discard()
        self._pending.clear()

    # -- commands from the admin (devices/device_commands.py, over the channel layer) ---------------------
    @property
    def connected(self) -> bool:
        """Past the hello and not closed: what is sent now reaches the device."""
        return self.framing is not None and not self.closed

    async def send_alert(self, status: str, message: str, emotion: str) -> None:
        await self.transport.send_text(encode(Alert(status, message, emotion)))

    async def reboot(self) -> None:
        log.info("session %s: reboot requested by the admin", self.config.session_id)
        await self.transport.send_text(encode(System("reboot")))

    def device_tools(self) -> tuple[Tool, ...]:
        """The tools the device listed over MCP on this connection (none without ``features.mcp``)."""
        return self.mcp.tools if self.mcp else ()

    async def call_tool(self, name: str, arguments: dict, timeout: float | None = None) -> ToolResult:
        if self.mcp is None:
            return ToolResult.error("the device does not speak MCP (its hello had no features.mcp)")
        await self.mcp.ready.wait()  # the tools are still being listed right after the hello
        return await self.mcp.call(name, arguments, timeout)

    def spawn(self, coro, name: str) -> asyncio.Task:
        """Run ``coro`` as a task of this session (cancelled when it closes)."""
        return self._spawn(coro, name)

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
        busy or timed-out VAD loses this batch (counted, logged) but never the session. Returns
        once everything queued before the call has been heard, a batch already out included."""
        async with self._hearing:
            await self._hear_pending()

    async def _hear_pending(self) -> None:
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
            elif isinstance(event, Pause) and self.state == LISTENING:
                self.speculation.on_pause(event)
            elif isinstance(event, SpeechResumed):
                self.speculation.discard()
            elif isinstance(event, Utterance) and self.state == LISTENING:
                self._start_turn(event, self.speculation.take())

    def _lost_audio(self, batch: list, exc: Exception) -> None:
        live_stats.incr("audio_lost", len(batch))
        if self.listener.hot:
            live_stats.incr("audio_lost_hot", len(batch))
        live_stats.incr(f"errors:vad:{type(exc).__name__}")
        log.warning("session %s: %d audio packets lost: %s", self.config.session_id, len(batch), exc)

    # -- turns ------------------------------------------------------------------------------------------------
    async def _transcribe(self, utterance: Utterance) -> str:
        deps = self._deps()
        return await deps.services["asr"].call("transcribe", deps.asr, pcm_bytes(utterance.pcm), owner=deps.device_id)

    async def _judge(self, utterance: Utterance) -> float | None:
        """The end-of-turn model's opinion of a pause, on the VAD's threads (in this process), ahead
        of the listening cycles queued there: someone is waiting for this answer."""
        if self._turn_model is None:
            return None
        services = self.services or default_services()
        # Urgent: while it runs the listeners' VAD cycles step aside, so it gets the cores and the GIL.
        return await services["vad"].run(vad_batcher.urgent(self._turn_model.probability), utterance.pcm,
                                         owner=self.config.device_id, deadline=FIRST)

    def _asr_has_room(self) -> bool:
        busy = (self.services or default_services())["asr"].occupancy()
        return busy["queued"] == 0 and busy["utilisation"] < 1

    def _end_of_turn(self, utterance: Utterance, transcript: Transcript) -> None:
        """The pause sounded and read like the end of the turn (``speculation``): answer now,
        without waiting for the full silence; what is heard after the pause is dropped, as after
        any cut."""
        if self.state != LISTENING or self.closed:
            transcript.task.cancel()
            return
        self.listener.reset()
        self._pending.clear()
        self._start_turn(utterance, transcript)

    def _start_turn(self, utterance: Utterance, transcript: Transcript | None = None) -> None:
        self.touch()
        if not self.config.activated:
            if transcript is not None:
                transcript.task.cancel()
            self._turn = self._spawn(self.activation.say(self._deps(), force=True), "activation")
            return
        now_loop = asyncio.get_running_loop().time()
        ago = time.monotonic() - utterance.speech_end
        record = TurnRecord(speech_end=now_loop - ago, speech_end_wall=time.time() - ago)
        self._phase = THINKING
        self._turn = self._spawn(self._turn_task(utterance, record, transcript), "turn")

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
            mcp=self.mcp,
            session_id=self.config.session_id,
            tool_max_steps=self.config.tool_max_steps,
        )

    async def _turn_task(self, utterance: Utterance, record: TurnRecord, transcript: Transcript | None = None) -> None:
        deps = self._deps()
        live_stats.gauge_add("active_turns", 1)
        stored: asyncio.Task | None = None
        try:
            await run_turn(deps, utterance, record, transcript)
            if not record.error and not record.end_conversation:
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
                stored = self._spawn(self.on_turn(record), "record-turn", after_close=True)
        if record.end_conversation:
            # The farewell was spoken and ``tts stop`` sent (the reply is over): the firmware
            # expects the server to close now. The turn is stored first, then the socket closes.
            if stored is not None:
                await asyncio.wait({stored}, timeout=5.0)
            await self._close_socket(CloseCode.NORMAL, "the conversation ended")

    # -- output -----------------------------------------------------------------------------------------------
    async def _send_audio(self, frame: bytes) -> None:
        await self.transport.send_bytes(self.framing.encode(frame) if self.framing else frame)
