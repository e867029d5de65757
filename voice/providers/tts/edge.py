"""Microsoft Edge's online voices through the ``edge-tts`` package: many languages (e.g.
``en-US-AriaNeural``, ``zh-CN-XiaoxiaoNeural``), no model on this machine, but it needs outbound
HTTPS to the service. Nothing reaches the network at start-up: building the provider only checks
that the packages import and that the default voice name is well formed.

The service streams MP3 (24 kHz mono, 48 kbit/s) over a WebSocket. It is decoded with miniaudio's
pull decoder as it arrives (``voice.audio.stream_decode``, shared with the OpenAI-compatible TTS), so
the first PCM chunk leaves after the first ~100 ms of audio rather than after the whole sentence.

Bridging asyncio into this synchronous, worker-thread interface: each ``synthesize`` call drives
its *own* event loop on the calling worker thread. edge-tts opens a fresh HTTP session and
WebSocket for every request anyway, so a shared long-lived loop thread would reuse nothing; a
private loop keeps the call on the thread the worker seam admitted (its concurrency bound stays
true), needs no cross-thread hand-off, and when the consumer closes the generator the request is
closed synchronously, right there, with nothing left running behind it.
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import re
from collections.abc import Iterator

import numpy as np

from voice.audio.stream_decode import PullFeed, decode_mp3
from voice.providers.base import ProviderUnavailable
from voice.providers.errors import TTSError

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000  # edge-tts always asks for audio-24khz-48kbitrate-mono-mp3
CLOSE_SECONDS = 2.0  # at most this long closing the WebSocket after a call
VOICE_SETTING = "XIAOZHI_EDGE_TTS_VOICE"
# edge-tts's short form: language-REGION-NameNeural, the name possibly with a locale part
# (zh-CN-liaoning-XiaobeiNeural).
_VOICE = re.compile(r"^[a-z]{2,3}-[A-Z]{2,4}-(?:[A-Za-z]+-)?[A-Za-z]+Neural$")


def package_problem() -> str | None:
    """Why the provider cannot run, found without importing anything heavy; None if it can."""
    missing = [name for name in ("edge_tts", "miniaudio") if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"the edge TTS provider needs {', '.join(missing)} (pip install -r requirements.txt), "
            "or set XIAOZHI_TTS_PROVIDER to another provider (piper)"
        )
    return None


def voice_problem(voice: str, where: str = VOICE_SETTING) -> str | None:
    """Why ``voice`` is not an Edge voice name, naming ``where`` it was set; None if well formed.
    Only the form is checked: the list of voices lives on the service."""
    if not _VOICE.match(voice or ""):
        return f"{where}={voice!r} is not an Edge voice name (like en-US-AriaNeural or zh-CN-XiaoxiaoNeural)"
    return None


def _point_edge_tts_at(url: str | None) -> None:
    """edge-tts reads its endpoint from a module constant when it connects, so an override is
    process-wide: one Edge provider per process (the registry's) sets it."""
    from edge_tts import communicate, constants

    if not url:
        communicate.WSS_URL = constants.WSS_URL
        return
    if "?" not in url:  # edge-tts appends "&ConnectionId=...": the URL must carry a query already
        url = f"{url}?TrustedClientToken={constants.TRUSTED_CLIENT_TOKEN}"
    communicate.WSS_URL = url


class EdgeTTS:
    name = "edge"
    sample_rate = SAMPLE_RATE

    def __init__(self, default_voice: str = "en-US-AriaNeural", url: str | None = None, timeout: float = 15.0):
        """``url``: the service's WebSocket endpoint (None = edge-tts's own); ``timeout``: seconds
        to connect, and at most between two pieces of audio."""
        problem = package_problem() or voice_problem(default_voice)
        if problem:
            raise ProviderUnavailable(problem)
        self.default_voice = default_voice
        self.url = url
        self.timeout = timeout
        _point_edge_tts_at(url)

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        """``voice``: the agent's Edge voice; blank = the default. Raises ``TTSError`` when the
        service cannot be reached, stalls, or sends no audio."""
        if not any(ch.isalnum() for ch in text):
            return
        voice = voice or self.default_voice
        problem = voice_problem(voice, where="the agent's voice")
        if problem:
            raise TTSError(problem)
        yield from _EdgeRequest(text, voice, self.timeout).pcm_chunks()


class _EdgeRequest:
    """One request: its private event loop, the edge-tts stream and the MP3 decoder."""

    def __init__(self, text: str, voice: str, timeout: float):
        import edge_tts

        seconds = max(1, math.ceil(timeout))
        self.timeout = timeout
        self._messages = edge_tts.Communicate(text, voice, connect_timeout=seconds, receive_timeout=seconds).stream()
        self._loop = asyncio.new_event_loop()
        self._feed = PullFeed(self._fetch)

    def pcm_chunks(self) -> Iterator[np.ndarray]:
        try:
            yield from decode_mp3(self._feed, SAMPLE_RATE)
        except TTSError:
            raise
        except Exception as exc:  # noqa: BLE001 - the network's or the decoder's failure, as a TTSError
            raise self._failure(exc) from exc
        finally:
            self._close()

    # -- the network side, run on the private loop whenever the decoder needs bytes ------------------------
    def _fetch(self) -> bytes | None:
        return self._loop.run_until_complete(self._next_audio())

    async def _next_audio(self) -> bytes | None:
        async with asyncio.timeout(self.timeout):
            async for message in self._messages:
                if message["type"] == "audio":
                    return message["data"]
        return None

    def _failure(self, exc: Exception) -> TTSError:
        if isinstance(exc, TimeoutError):
            return TTSError(f"Edge TTS timed out ({self.timeout:g} s without audio)")
        return TTSError(f"Edge TTS failed: {type(exc).__name__}: {exc}")

    def _close(self) -> None:
        loop = self._loop
        closing = self._aclose()
        try:
            loop.run_until_complete(closing)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception as exc:  # noqa: BLE001 - the audio is out; a close failure is not the turn's
            log.debug("closing the Edge TTS request failed: %s", exc)
            closing.close()  # never started when the generator is collected inside another running loop
        finally:
            loop.close()

    async def _aclose(self) -> None:
        async with asyncio.timeout(CLOSE_SECONDS):
            await self._messages.aclose()

