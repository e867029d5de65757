"""Any OpenAI-compatible transcription server (``POST <base>/audio/transcriptions``): hosted
Whisper, faster-whisper and whisper.cpp servers, SenseVoice and Paraformer servers, many Chinese
cloud APIs. The utterance is sent whole, as a 16 kHz mono 16-bit WAV (multipart ``file``), with
``model``, ``response_format=json`` and the language hint if one is set; the answer is ``{"text"}``.

Requests go through a ``RemoteEndpoint`` (``voice.providers.remote``): retries of a failed
connection, 429 or 5xx within the ASR's timeout, a circuit breaker, a clear error for a 4xx, the
same as the OpenAI-compatible LLM. Retrying is safe here: a transcription has no side effects and
nothing has reached the device yet.
"""
from __future__ import annotations

import io
import json
import wave

import numpy as np

from voice.audio.resample import float32_to_int16, mono_float32
from voice.providers.base import ProviderUnavailable
from voice.providers.errors import ASRError
from voice.providers.remote import RemoteEndpoint, RetryPolicy

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 10  # shorter than 0.1 s holds no word: not worth a request
MAX_REPLY_BYTES = 1 << 20  # a transcript of a 30 s utterance is a few hundred bytes


def wav_bytes(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono float32 PCM in [-1, 1] as a 16-bit WAV file, what every transcription server reads."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(float32_to_int16(pcm).tobytes())
    return out.getvalue()


class OpenAICompatibleASR:
    name = "openai"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None = None,
        model: str | None = "whisper-1",
        language: str | None = None,
        timeout: float = 15.0,
        policy: RetryPolicy = RetryPolicy(),
    ):
        """``language``: an ISO-639-1 hint (``zh``, ``en``); None lets the server detect it."""
        if not base_url:
            raise ProviderUnavailable(
                "the openai ASR provider needs a server: set XIAOZHI_ASR_BASE_URL "
                "(e.g. https://api.openai.com/v1, or a local faster-whisper or SenseVoice server)"
            )
        self.url = base_url.rstrip("/") + "/audio/transcriptions"
        self.model = model
        self.language = language or None
        self.endpoint = RemoteEndpoint("ASR server", self.url, ASRError, stats="asr", timeout=timeout,
                                       policy=policy, api_key=api_key, headers={"Accept": "application/json"})
        self.breaker = self.endpoint.breaker

    def transcribe(self, pcm: np.ndarray) -> str:
        pcm = mono_float32(pcm)
        if pcm.size < MIN_SAMPLES:
            return ""
        fields = {"response_format": "json"}
        if self.model:
            fields["model"] = self.model
        if self.language:
            fields["language"] = self.language
        response = self.endpoint.open(files={"file": ("utterance.wav", wav_bytes(pcm), "audio/wav")}, data=fields)
        with self.endpoint.reading(response):
            body = b""
            for piece in response.iter_bytes():
                body += piece
                if len(body) > MAX_REPLY_BYTES:
                    raise ASRError(f"{self.endpoint.label} sent more than {MAX_REPLY_BYTES} bytes for one transcript")
            return _transcript(body, self.endpoint.label)

    def close(self) -> None:
        self.endpoint.close()


def _transcript(body: bytes, where: str) -> str:
    try:
        reply = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ASRError(f"{where} sent a reply that is not JSON: {body[:200]!r}") from None
    text = reply.get("text") if isinstance(reply, dict) else None
    if not isinstance(text, str):
        raise ASRError(f"{where} sent no transcript (a JSON object with \"text\" expected): {body[:200]!r}")
    return text.strip()
