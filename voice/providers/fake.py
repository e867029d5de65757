"""Fake providers with scripted latency, named ``fake``: for tests, and for measuring what the
server itself adds to a turn without any model in the way. Never a default."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from voice.tools.model import ToolCall

SILENCE_PEAK = 1e-4  # float32 PCM quieter than this everywhere counts as silence
# The scripted device's tools (voice.simulated_device), so a fake-model server can show a whole tool turn.
DEFAULT_TOOL_RULES = {
    "volume to thirty": ("self.audio_speaker.set_volume", {"volume": 30}),
    "volume now": ("self.get_device_status", {}),
    "what time": ("get_time", {}),
    "goodbye": ("end_conversation", {}),
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
        tool_rules: Mapping[str, tuple[str, dict]] | None = None,
    ):
        """``tool_rules``: a phrase -> (tool name, arguments); when tools are offered, the tool
        exists (by its function name, dots as underscores) and the last user message contains the
        phrase (case-insensitive), the reply is that tool call. After a tool result the reply is
        "Done: <result>"."""
        self.reply = reply
        self.delay_first = delay_first
        self.delay_token = delay_token
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
               tools: Sequence[dict] | None = None) -> Iterator[str | ToolCall]:
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
