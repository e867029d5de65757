"""Any OpenAI-compatible speech server (``POST <base>/audio/speech``): OpenAI's voices, and the
many hosted and self-hosted servers that copy the API (Kokoro-FastAPI, openedai-speech, CosyVoice
and other Chinese voices behind a compatible front). The request is ``{model, input, voice,
response_format}``; the body is read as it arrives and decoded as it comes (``voice.audio.stream_decode``),
so where the server streams, the first audio is on its way before the sentence is finished:

- ``pcm``: raw 16-bit little-endian mono at ``sample_rate`` (24 kHz is what OpenAI sends), the
  cheapest to stream;
- ``wav``: 16-bit PCM at any rate (read from its header, resampled), sizes in the header ignored
  since a streaming server cannot know them;
- ``mp3``: decoded with miniaudio, as Edge TTS is.

Requests go through a ``RemoteEndpoint`` (``voice.providers.remote``), the same retries, breaker and
timeouts as the OpenAI-compatible LLM: retried only until the server answers 2xx, since audio
already handed on would be spoken twice.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from voice.audio.stream_decode import PullFeed, WavFormatError, decode_mp3, decode_pcm16, decode_wav, iterator_fetch
from voice.providers.base import ProviderUnavailable
from voice.providers.errors import TTSError
from voice.providers.remote import RemoteEndpoint, RetryPolicy

FORMATS = ("pcm", "wav", "mp3")
MAX_ERROR_BODY = 300


def format_problem(response_format: str, where: str = "XIAOZHI_TTS_FORMAT") -> str | None:
    if response_format not in FORMATS:
        return f"{where}={response_format!r} is not a format this server decodes as it streams; use one of: {', '.join(FORMATS)}"
    return None


class OpenAICompatibleTTS:
    name = "openai"

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None = None,
        model: str | None = "tts-1",
        voice: str = "alloy",
        response_format: str = "pcm",
        sample_rate: int = 24000,
        timeout: float = 15.0,
        policy: RetryPolicy = RetryPolicy(),
    ):
        """``voice``: the voice when an agent names none; ``sample_rate``: the rate of ``pcm``
        replies, and the rate ``wav`` and ``mp3`` replies are converted to."""
        if not base_url:
            raise ProviderUnavailable(
                "the openai TTS provider needs a server: set XIAOZHI_TTS_BASE_URL "
                "(e.g. https://api.openai.com/v1, or a local Kokoro-FastAPI server)"
            )
        problem = format_problem(response_format)
        if problem:
            raise ProviderUnavailable(problem)
        self.url = base_url.rstrip("/") + "/audio/speech"
        self.model = model
        self.default_voice = voice
        self.response_format = response_format
        self.sample_rate = sample_rate
        self.endpoint = RemoteEndpoint("TTS server", self.url, TTSError, stats="tts", timeout=timeout,
                                       policy=policy, api_key=api_key)
        self.breaker = self.endpoint.breaker

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        """``voice``: the agent's voice; blank = the default. Raises ``TTSError`` when the server
        cannot be reached, stalls, refuses, or sends no audio we can decode."""
        if not any(ch.isalnum() for ch in text):
            return
        body = {"input": text, "voice": voice or self.default_voice, "response_format": self.response_format}
        if self.model:
            body["model"] = self.model
        response = self.endpoint.open(json=body)
        with self.endpoint.reading(response):
            kind = response.headers.get("Content-Type", "")
            if kind.startswith(("application/json", "text/")):
                response.read()
                raise TTSError(f"{self.endpoint.label} sent {kind} instead of audio: {response.text[:MAX_ERROR_BODY]}")
            samples = 0
            try:
                for chunk in self._decode(response.iter_bytes()):
                    samples += chunk.size
                    yield chunk
            except WavFormatError as exc:
                raise TTSError(f"{self.endpoint.label} sent a WAV this server cannot read: {exc}") from exc
            except Exception as exc:
                if _is_decode_error(exc):
                    raise TTSError(f"{self.endpoint.label} sent audio that is not MP3: {exc}") from exc
                raise
            if not samples:
                raise TTSError(f"{self.endpoint.label} sent no audio for {text[:40]!r}")

    def _decode(self, pieces: Iterator[bytes]) -> Iterator[np.ndarray]:
        if self.response_format == "pcm":
            return decode_pcm16(pieces, self.sample_rate, self.sample_rate)
        if self.response_format == "wav":
            return decode_wav(pieces, self.sample_rate)
        return decode_mp3(PullFeed(iterator_fetch(pieces)), self.sample_rate)

    def close(self) -> None:
        self.endpoint.close()


def _is_decode_error(exc: Exception) -> bool:
    """miniaudio's DecodeError, with miniaudio imported only once it may have raised one."""
    import sys

    miniaudio = sys.modules.get("miniaudio")
    return miniaudio is not None and isinstance(exc, miniaudio.DecodeError)
