"""The small interfaces every voice provider implements.

Provider calls are *blocking*: they run on worker threads (or Celery workers), never on the event
loop. The dispatch seam in ``voice.workers`` turns them into awaitables with a concurrency bound,
a queue bound and a timeout. A provider object is heavy and shared by every session of the
process; anything per-session (VAD state, dialogue history) lives outside it.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from voice.tools.model import ToolCall


class ProviderUnavailable(RuntimeError):
    """A provider cannot start: its package, weights or network are missing. The message names
    the setting to change."""


@runtime_checkable
class VADStream(Protocol):
    """Per-session VAD state over a shared model."""

    def probabilities(self, pcm: np.ndarray) -> list[float]:
        """Speech probability for each full 512-sample (32 ms) chunk of 16 kHz float32 PCM fed so
        far; a remainder shorter than a chunk is kept for the next call."""

    def reset(self) -> None: ...


@runtime_checkable
class VADModel(Protocol):
    name: str
    sample_rate: int  # 16000

    def new_stream(self) -> VADStream: ...


@runtime_checkable
class ASRProvider(Protocol):
    name: str

    def transcribe(self, pcm: np.ndarray) -> str:
        """Text of one utterance: mono float32 PCM at 16 kHz in [-1, 1]."""


@runtime_checkable
class LLMProvider(Protocol):
    name: str

    def stream(self, messages: Sequence[dict], cancel: threading.Event,
               tools: Sequence[dict] | None = None) -> Iterator[str | ToolCall]:
        """Yield text deltas of the reply to OpenAI-style ``messages``. Stops early, promptly,
        once ``cancel`` is set. With ``tools`` (OpenAI function specs) the model may instead ask
        for tool calls: each is yielded as a ``ToolCall`` (arguments parsed), and the reply ends
        there; ``messages`` may then hold ``assistant`` messages with ``tool_calls`` and ``tool``
        results (voice.pipeline.tool_loop). A provider that serves several models also takes
        ``model=`` (``AgentConfig.llm_model``); it is passed only when one is set."""


@runtime_checkable
class TTSProvider(Protocol):
    name: str
    sample_rate: int

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        """Yield mono int16 PCM chunks at ``sample_rate`` for ``text``; the first chunk as early
        as the engine allows."""


class Prefillable(Protocol):
    def prefill(self, messages: Sequence[dict]) -> None:
        """Optional for LLMs: pre-evaluate a prompt prefix while idle (see SmolLM2LLM.prefill)."""


class Warmable(Protocol):
    def warm(self) -> None:
        """Run one tiny inference so the first real request pays no lazy initialisation."""
