"""Fake providers with scripted latency (and failures), named ``fake``: for tests, and for
measuring what the server itself adds to a turn without any model in the way. Never a default.
``FakeVAD`` hears any sound as voice, so the fast conversation tests need no Silero."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np

from voice.providers.errors import LLMError

SILENCE_PEAK = 1e-4  # float32 PCM quieter than this everywhere counts as silence


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
    ):
        """``fail_after``: raise ``LLMError`` after that many words (0: before the first word)."""
        self.reply = reply
        self.delay_first = delay_first
        self.delay_token = delay_token
        self.fail_after = fail_after
        self.models: list[str | None] = []  # the ``model`` each request asked for, last 100

    def stream(self, messages: Sequence[dict], cancel: threading.Event, model: str | None = None) -> Iterator[str]:
        self.models = [*self.models[-99:], model]
        if _cancelled_during(cancel, self.delay_first):
            return
        for i, word in enumerate(self.reply.split()):
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


class FakeVAD:
    """Any sound is voice: one score per 32 ms chunk, 1.0 where the chunk's RMS passes
    ``level``, else 0.0 (float32 PCM in [-1, 1]). Stateless, so a stream is the model itself."""

    name = "fake"
    CHUNK = 512  # samples at 16 kHz, as Silero's

    def __init__(self, level: float = 0.01):
        self.level = level

    def new_stream(self) -> FakeVAD:
        return self

    def probabilities(self, pcm: np.ndarray) -> list[float]:
        pcm = np.asarray(pcm, dtype=np.float32)
        chunks = max(len(pcm) // self.CHUNK, 1)
        return [1.0 if float(np.sqrt(np.mean(np.square(c)))) > self.level else 0.0
                for c in np.array_split(pcm, chunks) if c.size] or [0.0]

    def reset(self) -> None:
        pass
