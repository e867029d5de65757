"""Fake providers with scripted latency (and failures), named ``fake``: for tests, and for
measuring what the server itself adds to a turn without any model in the way. Never a default.
``FakeVAD`` hears any sound as voice, so the fast conversation tests need no Silero."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from voice.providers.errors import LLMError
from voice.tools.model import ToolCall

SILENCE_PEAK = 1e-4  # float32 PCM quieter than this everywhere counts as silence
# The scripted device's tools (voice.simulated_device), so a fake-model server can show a whole tool turn.
DEFAULT_TOOL_RULES = {
    "volume to thirty": ("self.audio_speaker.set_volume", {"volume": 30}),
    "volume now": ("self.get_device_status", {}),
    "what time": ("get_time", {}),
    "goodbye": ("end_conversation", {}),
    "what do you see": ("self.camera.take_photo", {"question": "What do you see?"}),  # a device with a camera
}


class FakeASR:
    name = "fake"

    def __init__(self, text: str = "hello there", delay: float = 0.0):
        self.text = text
        self.delay = delay

    def transcribe(self, pcm: np.ndarray) -> str:
        if self.delay:
            time.sleep(self.delay)
        pcm = np.asarray(pcm)
        peak = float(np.abs(pcm).max()) if pcm.size else 0.0
        if pcm.dtype == np.int16:
            peak /= 32768.0
        return self.text if peak > SILENCE_PEAK else ""


class FakeLLM:
    name = "fake"

    def __init__(
        self,
        reply: str = "Hello! I am a fake model. How can I help?",
        delay_first: float = 0.0,
        delay_token: float = 0.0,
        fail_after: int | None = None,
        tool_rules: Mapping[str, tuple[str, dict]] | None = None,
    ):
        """``fail_after``: raise ``LLMError`` after that many words (0: before the first word).
        ``tool_rules``: a phrase -> (tool name, arguments); when tools are offered, the tool
        exists (by its function name, dots as underscores) and the last user message contains the
        phrase (case-insensitive), the reply is that tool call. After a tool result the reply is
        "Done: <result>"."""
        self.reply = reply
        self.delay_first = delay_first
        self.delay_token = delay_token
        self.fail_after = fail_after
        self.models: list[str | None] = []  # the ``model`` each request asked for, last 100
        self.tool_rules = dict(tool_rules if tool_rules is not None else DEFAULT_TOOL_RULES)
        self._calls = 0

    def _tool_call(self, messages: Sequence[dict], tools: Sequence[dict] | None) -> ToolCall | None:
        if not tools or not messages or messages[-1].get("role") != "user":
            return None
        offered = {spec["function"]["name"] for spec in tools}
        said = str(messages[-1].get("content") or "").lower()
        for phrase, (name, arguments) in self.tool_rules.items():
            function = name.replace(".", "_")
            if phrase.lower() in said and function in offered:
                self._calls += 1
                return ToolCall(f"call_{self._calls}", function, dict(arguments))
        return None

    def stream(self, messages: Sequence[dict], cancel: threading.Event,
               tools: Sequence[dict] | None = None, model: str | None = None) -> Iterator[str | ToolCall]:
        self.models = [*self.models[-99:], model]
        if _cancelled_during(cancel, self.delay_first):
            return
        call = self._tool_call(messages, tools)
        if call is not None:
            yield call
            return
        reply = self.reply
        if messages and messages[-1].get("role") == "tool":
            reply = f"Done: {messages[-1].get('content')}"
        for i, word in enumerate(reply.split()):
            if i == self.fail_after:
                raise LLMError(f"fake LLM failed after {i} words, as scripted")
            if i and _cancelled_during(cancel, self.delay_token):
                return
            yield word if i == 0 else " " + word


def _cancelled_during(cancel: threading.Event, delay: float) -> bool:
    """Wait on the event rather than sleep, so a cancel cuts even a long scripted delay short."""
    return cancel.wait(delay) if delay > 0 else cancel.is_set()


class FakeTTS:
    name = "fake"

    def __init__(self, sample_rate: int = 16000, delay_first: float = 0.0, seconds_per_word: float = 0.25):
        self.sample_rate = sample_rate
        self.delay_first = delay_first
        self.seconds_per_word = seconds_per_word

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        """A 220 Hz tone as long as the text would take to say."""
        words = len(text.split())
        if not words:
            return
        if self.delay_first:
            time.sleep(self.delay_first)
        samples = int(round(words * self.seconds_per_word * self.sample_rate))
        t = np.arange(samples, dtype=np.float32) / self.sample_rate
        yield (np.sin(2 * np.pi * 220.0 * t) * 0.3 * 32767).astype(np.int16)


class FakeTurn:
    """An end-of-turn model with a fixed opinion: ``probability`` the speaker has finished (None:
    no opinion, so only silence ends a turn). Counts the pauses it was asked about."""

    name = "fake"

    def __init__(self, probability: float | None = None):
        self.value = probability
        self.asked = 0

    def probability(self, pcm: np.ndarray) -> float | None:
        self.asked += 1
        return self.value


class FakeVAD:
    """Any sound is voice: a score per full 32 ms chunk, 1.0 where the chunk's RMS passes ``level``,
    else 0.0 (float32 PCM in [-1, 1]), so tests of the conversation need no Silero."""

    name = "fake"
    sample_rate = 16000

    def __init__(self, level: float = 0.01):
        self.level = level

    def new_stream(self) -> FakeVADStream:
        return FakeVADStream(self.level)


class FakeVADStream:
    CHUNK = 512  # samples, as Silero's

    def __init__(self, level: float):
        self.level = level
        self._rest = np.zeros(0, np.float32)

    def probabilities(self, pcm: np.ndarray) -> list[float]:
        """A score per full chunk fed so far; a shorter remainder waits for the next call."""
        pcm = np.concatenate([self._rest, np.asarray(pcm, dtype=np.float32)])
        full = len(pcm) // self.CHUNK * self.CHUNK
        self._rest = pcm[full:]
        chunks = pcm[:full].reshape(-1, self.CHUNK)
        return [1.0 if rms > self.level else 0.0 for rms in np.sqrt(np.mean(np.square(chunks), axis=1))]

    def reset(self) -> None:
        self._rest = np.zeros(0, np.float32)
