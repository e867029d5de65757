"""Fixed phrases (the wake-word greeting) synthesised once and replayed from memory.

A greeting is the same few words every time the wake word fires: synthesising it again would cost
TTS time on every wake-up, and delay the reply behind other devices' sentences. The first time a
phrase is said its Opus frames are kept, per TTS provider, voice, output rate and text, in a
bounded LRU (``MAX_PHRASES`` phrases of at most ``MAX_PHRASE_FRAMES`` frames each), so the next
time it costs no model time at all. A phrase cut off (abort) or failed half way is not kept.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import aclosing

from voice.pipeline.turn import TurnDeps

log = logging.getLogger(__name__)

MAX_PHRASES = 32
MAX_PHRASE_FRAMES = 250  # 15 s of 60 ms frames: a greeting, not a speech

Key = tuple[str, str, int, str]  # tts provider, voice, output rate, text


class PhraseCache:
    """A bounded LRU of synthesised phrases; ``hits`` and ``misses`` say how it served."""

    def __init__(self, size: int = MAX_PHRASES, max_frames: int = MAX_PHRASE_FRAMES):
        self.size = size
        self.max_frames = max_frames
        self.hits = 0
        self.misses = 0
        self._phrases: OrderedDict[Key, tuple[bytes, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._phrases)

    def get(self, key: Key) -> tuple[bytes, ...] | None:
        frames = self._phrases.get(key)
        if frames is not None:
            self._phrases.move_to_end(key)
        return frames

    def put(self, key: Key, frames: tuple[bytes, ...]) -> None:
        if not frames or len(frames) > self.max_frames:
            return
        self._phrases[key] = frames
        self._phrases.move_to_end(key)
        while len(self._phrases) > self.size:
            self._phrases.popitem(last=False)

    def clear(self) -> None:
        self._phrases.clear()
        self.hits = self.misses = 0


PHRASES = PhraseCache()  # one per process: phrases are the same for every session


def key_for(deps: TurnDeps, text: str) -> Key:
    return (deps.tts, deps.voice or "", deps.output_rate, text)


async def say_phrase(deps: TurnDeps, text: str, cache: PhraseCache = PHRASES) -> None:
    """Speak ``text`` as a complete reply (``tts start``, subtitle, audio, ``tts stop``), from the
    cache when it is there, else synthesised (and then kept). Cancelling the caller (abort) leaves
    the reply for ``Pacer.interrupt`` to close, as for any reply."""
    key = key_for(deps, text)
    if not deps.pacer.reply_open:
        await deps.pacer.begin()
    await deps.pacer.sentence(text)
    frames = cache.get(key)
    if frames is not None:
        cache.hits += 1
        for frame in frames:
            await deps.pacer.audio(frame)
    else:
        cache.misses += 1
        collected: list[bytes] = []
        stream = deps.services["tts"].stream("tts_frames", deps.tts, text, deps.voice, deps.output_rate,
                                             owner=deps.device_id, deadline=deps.pacer.runs_dry_at())
        async with aclosing(stream):
            async for chunk in stream:
                for frame in chunk:
                    collected.append(frame)
                    await deps.pacer.audio(frame)
        cache.put(key, tuple(collected))  # only reached when the whole phrase was synthesised
    await deps.pacer.end()
    await deps.pacer.wait_stopped()


async def greet(deps: TurnDeps, text: str, cache: PhraseCache = PHRASES) -> None:
    """The wake-word greeting: a failure is logged and the reply closed (``tts stop``), never
    raised, so the device is not left in ``speaking``."""
    try:
        await say_phrase(deps, text, cache)
    except Exception as exc:  # noqa: BLE001 - the TTS may be busy or down; the session goes on
        log.warning("wake greeting failed: %s", exc)
        await deps.pacer.interrupt()
