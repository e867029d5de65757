"""Drives a ``VoiceSession`` on a scripted timeline, in milliseconds of wall time, with no socket
and no model: a clearly named speed-up beside the real tests of the same paths
(``test_conversation.py``: the bundled models over the real ASGI app).

The session is the real one, with its real listener, pacer, turn and dispatch seam (threads with
admission, a fresh set per conversation); only the providers are the scripted fakes of
``voice.providers.fake`` (``FakeVAD`` hears any sound as voice, so no Silero), registered under the
name ``script``, and the socket is a ``Wire`` that records what the session sends, when (ms since
the conversation began), and in which state the session was as it sent it.

    async with Conversation(llm=FakeLLM("One. Two."), tts=FakeTTS(seconds_per_word=0.03)) as c:
        await c.listen("start", "auto")
        c.say(0.3)                               # 0.3 s of voice, then the silence that ends it
        await c.until("tts", "stop")
        assert c.labels() == ["hello", "stt", "tts:start", "llm", "tts:sentence_start", "audio", ...]
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from dataclasses import dataclass

import numpy as np

from voice.audio.opus import encode_all
from voice.conf import SERVICES, service_limits
from voice.pipeline.turn import TurnRecord
from voice.protocol import Abort, Hello, Listen, Mcp, Tts, encode, parse_server_message
from voice.providers import fake, registry
from voice.session import SessionConfig, SessionState, VoiceSession
from voice.workers.local import LocalService

NAME = "script"  # the providers' name in the registry while a conversation runs
RATE = 16000  # the device's uplink: 16 kHz mono Opus, 60 ms packets
DTX = b"\xf8"  # what the firmware sends for 60 ms of silence (a packet of at most 3 bytes)


@functools.cache
def _tone_packets(count: int) -> tuple[bytes, ...]:
    t = np.arange(count * 960, dtype=np.float32) / RATE
    pcm = (np.sin(2 * np.pi * 300.0 * t) * 0.3 * 32767).astype(np.int16)
    return tuple(encode_all(pcm, RATE, 60)[:count])


def voice_packets(seconds: float) -> list[bytes]:
    """Opus packets of a steady tone: voice to ``FakeVAD``, speech to ``FakeASR``."""
    return list(_tone_packets(max(1, round(seconds / 0.06))))


def silence_packets(seconds: float) -> list[bytes]:
    return [DTX] * max(1, round(seconds / 0.06))


@dataclass(frozen=True)
class Sent:
    ms: float  # since the conversation began
    kind: str  # "json", "audio" or "close"
    message: object  # a voice.protocol server message, the audio frame, or (code, reason)
    state: SessionState  # the session's state as it sent this

    @property
    def label(self) -> str:
        if self.kind != "json":
            return self.kind
        state = getattr(self.message, "state", None)
        return f"{self.message.TYPE}:{state}" if state else self.message.TYPE


class Wire:
    """The session's transport: records every message instead of sending it."""

    def __init__(self, clock):
        self.on_mcp = None  # called with each MCP payload the session sends (the device's answers)
        self.sent: list[Sent] = []
        self.session: VoiceSession | None = None
        self._clock = clock
        self._changed = asyncio.Event()

    def _record(self, kind: str, message) -> None:
        self.sent.append(Sent(self._clock(), kind, message, self.session.state))
        self._changed.set()

    async def send_text(self, text: str) -> None:
        message = parse_server_message(text)
        self._record("json", message)
        if isinstance(message, Mcp) and self.on_mcp is not None:
            self.on_mcp(message.payload)

    async def send_bytes(self, data: bytes) -> None:
        self._record("audio", data)

    async def close(self, code: int, reason: str) -> None:
        self._record("close", (code, reason))

    async def wait(self, predicate, timeout: float, since: int = 0) -> Sent:
        """The first message from index ``since`` on that satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                for sent in self.sent[since:]:
                    if predicate(sent):
                        return sent
                since = len(self.sent)
                self._changed.clear()
                await self._changed.wait()


class Conversation:
    """One scripted device session. Use as ``async with``: it says hello on entry and closes the
    session, its services and the providers' registration on exit."""

    def __init__(self, *, asr=None, llm=None, tts=None, vad=None, turn=None, hello: bool = True, tools: bool = False,
                 features: dict | None = None, device_tools=None, **config):
        """``tools``: offer the LLM tools (XIAOZHI_TOOLS_ENABLED; off by default, so the scripted
        "What time is it?" is answered by the scripted reply). ``features``: the hello's (e.g.
        ``{"mcp": True}``). ``device_tools``: the device's MCP server (``loadtest.device_tools.
        FirmwareTools``), answering what the session asks; it implies ``features.mcp``."""
        self.providers = {
            "vad": vad or fake.FakeVAD(),
            "asr": asr or fake.FakeASR("What time is it?"),
            "llm": llm or fake.FakeLLM("It is noon."),
            "tts": tts or fake.FakeTTS(seconds_per_word=0.03),  # a frame per two words
            "turn": turn or fake.FakeTurn(),  # no opinion: silence ends turns, unless a test says
        }
        self.config = SessionConfig(device_id="aa:bb:cc:00:00:01", asr_provider=NAME, llm_provider=NAME,
                                    tts_provider=NAME, **config)
        self.hello = hello
        self.tools = tools
        self.features = features or ({"mcp": True} if device_tools is not None else {})
        self.device_tools = device_tools
        self.records: list[TurnRecord] = []
        self.services = {name: LocalService(service_limits(name)) for name in SERVICES}
        self.session: VoiceSession | None = None
        self.wire: Wire | None = None
        self._started = 0.0
        self._recorded = asyncio.Event()

    # -- set up and tear down ---------------------------------------------------------------------------
    async def __aenter__(self) -> Conversation:
        from django.conf import settings

        self._vad_setting = settings.XIAOZHI_VAD_PROVIDER
        self._tools_setting = settings.XIAOZHI_TOOLS_ENABLED
        settings.XIAOZHI_TOOLS_ENABLED = self.tools
        self._turn_setting = settings.XIAOZHI_TURN_PROVIDER
        for kind, provider in self.providers.items():
            registry.forget(kind, NAME)
            registry.BUILDERS[kind][NAME] = lambda provider=provider: provider
        settings.XIAOZHI_VAD_PROVIDER = NAME
        settings.XIAOZHI_TURN_PROVIDER = NAME
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self.wire = Wire(self.now)
        self.session = VoiceSession(self.wire, self.config, on_turn=self._on_turn, services=self.services)
        self.wire.session = self.session
        if self.device_tools is not None:
            self.wire.on_mcp = self._answer_mcp
        self.session.start()
        if self.hello:
            await self.send(Hello(version=1, features=self.features))
        return self

    async def __aexit__(self, *exc) -> None:
        from django.conf import settings

        await self.session.close("test over")
        for kind in self.providers:
            registry.BUILDERS[kind].pop(NAME, None)
            registry.forget(kind, NAME)
        settings.XIAOZHI_VAD_PROVIDER = self._vad_setting
        settings.XIAOZHI_TOOLS_ENABLED = self._tools_setting
        settings.XIAOZHI_TURN_PROVIDER = self._turn_setting
        for service in self.services.values():
            service.shutdown()

    def _answer_mcp(self, payload: dict) -> None:
        """The device answers on its own time, as over a socket: after the session's send returns."""
        for reply in self.device_tools.answer(payload):
            self.session._spawn(self.send(Mcp(reply)), "device-mcp-reply")

    async def _on_turn(self, record: TurnRecord) -> None:
        # A copy: what is stored is the record as it was when handed over, not as it became later.
        self.records.append(dataclasses.replace(record, marks=dict(record.marks),
                                                model_seconds=dict(record.model_seconds)))
        self._recorded.set()

    # -- the timeline -------------------------------------------------------------------------------------
    def now(self) -> float:
        """Milliseconds since the conversation began."""
        return round((asyncio.get_running_loop().time() - self._started) * 1000, 1)

    async def at(self, ms: float) -> None:
        """Wait until ``ms`` milliseconds after the conversation began."""
        await asyncio.sleep(max(ms - self.now(), 0) / 1000)

    async def send(self, message) -> None:
        await self.session.handle_text(encode(message))

    async def listen(self, state: str, mode: str | None = None) -> None:
        await self.send(Listen(state, mode))

    async def abort(self) -> None:
        await self.send(Abort())

    def say(self, seconds: float, silence: float = 0.6) -> None:
        """``seconds`` of voice then ``silence`` (the VAD's 500 ms ends the utterance), arriving
        at once: the session drains them as one batch."""
        for packet in voice_packets(seconds) + (silence_packets(silence) if silence else []):
            self.session.handle_binary(packet)

    async def until(self, kind: str, state: str | None = None, *, after: int = 0, timeout: float = 5.0) -> Sent:
        """The first message of that type (``"audio"``, ``"tts"``, ``"stt"``...), and ``state`` if
        given, among those sent after the first ``after``."""
        def matches(sent: Sent) -> bool:
            if sent.kind == kind:
                return True
            return (sent.kind == "json" and sent.message.TYPE == kind
                    and (state is None or getattr(sent.message, "state", None) == state))

        return await self.wire.wait(matches, timeout, since=after)

    async def turns_recorded(self, count: int, timeout: float = 5.0) -> list[TurnRecord]:
        async with asyncio.timeout(timeout):
            while len(self.records) < count:
                self._recorded.clear()
                await self._recorded.wait()
        return self.records

    async def settle(self, ms: float = 150) -> None:
        """Let the session run on for a while (nothing more should be sent, say)."""
        await asyncio.sleep(ms / 1000)

    # -- reading what was sent ------------------------------------------------------------------------------
    @property
    def sent(self) -> list[Sent]:
        return self.wire.sent

    def labels(self, since: int = 0) -> list[str]:
        """What was sent, in order, with each run of audio frames as one ``"audio"``."""
        labels: list[str] = []
        for sent in self.sent[since:]:
            if not (sent.label == "audio" and labels and labels[-1] == "audio"):
                labels.append(sent.label)
        return labels

    def states(self) -> list[str]:
        """The session's state at each message, with repeats collapsed."""
        states: list[str] = []
        for sent in self.sent:
            if not states or states[-1] != sent.state.value:
                states.append(sent.state.value)
        return states

    def sentences(self) -> list[str]:
        return [s.message.text for s in self.sent
                if isinstance(s.message, Tts) and s.message.state == "sentence_start"]

    def count(self, label: str) -> int:
        return sum(sent.label == label for sent in self.sent)


def dump(sent: list[Sent]) -> str:
    """The timeline as text, for a failing assertion's message."""
    return "\n".join(f"{s.ms:8.1f} ms  {s.state.value:9} {s.label}"
                     + (f" {json.dumps(getattr(s.message, 'text', ''))}" if s.kind == "json" else "")
                     for s in sent)
