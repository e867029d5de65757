"""The model work of a turn as named operations with serialisable arguments.

A bound provider method cannot travel to another host, a name and plain data can: each operation
takes provider *names* (looked up with ``voice.providers.registry`` in whichever process runs it),
bytes, strings, numbers and lists/dicts of those. The same functions run on the in-process threads
(``LocalService``) and in Celery workers (``voice.tasks``).

Streaming operations are generators and take a keyword-only ``cancel`` event, set by the backend
when the consumer stops early; they check it between items so an abandoned stream frees its slot.
"""
from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from voice.audio.opus import OpusEncoder
from voice.audio.resample import resample
from voice.providers import registry
from voice.tools.model import ToolCall
from voice.workers import first_audio

PCM_DTYPE = np.float32  # utterances are float32 16 kHz mono; sent as their raw bytes (exact, no base64)


class UnknownOperation(LookupError):
    pass


@dataclass(frozen=True)
class Operation:
    name: str
    fn: Callable
    streams: bool


OPERATIONS: dict[str, Operation] = {}


def operation(name: str, *, streams: bool = False):
    """Register ``fn`` under ``name`` (tests register probes the same way, in both processes)."""

    def register(fn: Callable) -> Callable:
        OPERATIONS[name] = Operation(name, fn, streams)
        return fn

    return register


def get(name: str) -> Operation:
    try:
        return OPERATIONS[name]
    except KeyError:
        raise UnknownOperation(f"unknown voice operation {name!r}; known: {', '.join(sorted(OPERATIONS))}") from None


def pcm_bytes(pcm: np.ndarray) -> bytes:
    return np.ascontiguousarray(pcm, dtype=PCM_DTYPE).tobytes()


@operation("transcribe")
def transcribe(asr_name: str, pcm: bytes) -> str:
    return registry.get_asr(asr_name).transcribe(np.frombuffer(pcm, dtype=PCM_DTYPE))


@functools.cache
def _parameters(fn) -> frozenset[str] | None:
    """A callable's parameter names, or None when it takes ``**kwargs`` (anything goes)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def _takes(fn, name: str) -> bool:
    names = _parameters(getattr(fn, "__func__", fn))
    return names is None or name in names


@operation("reply_stream", streams=True)
def reply_stream(llm_name: str, messages: list[dict], tools: list[dict] | None = None, model: str | None = None, *,
                 cancel: threading.Event) -> Iterator[str | dict]:
    """Text deltas of the assistant's reply; with ``tools`` (OpenAI function specs) also tool
    calls, as ``ToolCall.to_wire()`` dicts so they cross a worker's msgpack seam unchanged
    (``ToolCall.from_wire`` reads them back). ``model`` picks one of the provider's models (the
    agent's ``llm_model``), for providers that serve several; it is passed only when set. A
    provider written before tools (``stream(messages, cancel)``) is simply offered none."""
    llm = registry.get_llm(llm_name)
    extra = {"model": model} if model else {}
    if tools and _takes(llm.stream, "tools"):
        extra["tools"] = tools
    items = llm.stream(messages, cancel, **extra)
    gate = first_audio.gate()
    for item in items:
        yield item.to_wire() if isinstance(item, ToolCall) else item
        gate.wait(cancel)  # no next token while a first clause is being synthesised (``first_audio``)


@operation("tts_frames", streams=True)
def tts_frames(tts_name: str, text: str, voice: str | None, output_rate: int, *, cancel: threading.Event) -> Iterator[list[bytes]]:
    """Lists of 60 ms Opus frames at ``output_rate``: resampled and encoded where the voice is
    synthesised, so the event loop (or the network) only carries finished frames."""
    tts = registry.get_tts(tts_name)
    encoder = OpusEncoder(output_rate, 60)
    for chunk in tts.synthesize(text, voice):
        if cancel.is_set():
            return
        pcm = resample(np.asarray(chunk, dtype=np.int16), tts.sample_rate, output_rate)
        frames = encoder.encode(pcm)
        if frames:
            yield frames
    tail = encoder.flush()
    if tail:
        yield tail


@operation("describe_image")
def describe_image(vllm_name: str, question: str, image: bytes, mime: str, model: str | None = None) -> str:
    """The vision provider's answer to a question about a photo (the camera tool's upload)."""
    return registry.get_vllm(vllm_name).describe(question, image, mime, model=model)


@operation("prefill")
def prefill(llm_name: str, messages: list[dict]) -> None:
    """Pre-evaluate a conversation so the next turn's prompt is cached; a no-op for LLMs without it."""
    fn = getattr(registry.get_llm(llm_name), "prefill", None)
    if fn is not None:
        fn(messages)


@operation("prefill_tools")
def prefill_tools(llm_name: str, tools: list[dict]) -> None:
    """Prepare the LLM's tool decision for these tools (SmolLM2 evaluates its router prompt); a
    no-op for LLMs that decide natively."""
    fn = getattr(registry.get_llm(llm_name), "prefill_tools", None)
    if fn is not None and tools:
        fn(tools)


@operation("summarize_memory")
def summarize_memory(llm_name: str, old_memory: str, dialogue: list[list[str]], max_chars: int,
                     model: str | None = None) -> str:
    """A device's memory rewritten with what the user said about themselves in ``dialogue``
    ((user, assistant) pairs), at most ``max_chars`` (``voice.memory``)."""
    from voice import memory

    llm = registry.get_llm(llm_name)
    messages = memory.summary_messages(old_memory, dialogue, max_chars)
    cancel = threading.Event()
    extra = {"model": model} if model else {}
    if _takes(llm.stream, "background"):
        extra["background"] = True  # nobody waits for it: every reply goes first (interleave.py)
    parts = llm.stream(messages, cancel, **extra)
    return memory.clean_summary("".join(parts), old_memory, max_chars)
