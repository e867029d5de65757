"""Sample-rate and sample-format conversion between devices (16/24 kHz) and models (16/22.05 kHz)."""
from __future__ import annotations

import numpy as np
import soxr


def int16_to_float32(pcm: np.ndarray) -> np.ndarray:
    return np.asarray(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def mono_float32(pcm: np.ndarray) -> np.ndarray:
    """Any utterance (int16 or float) as the flat float32 array in [-1, 1] that ASR models take."""
    if pcm.dtype == np.int16:
        return int16_to_float32(pcm).reshape(-1)
    return np.asarray(pcm, dtype=np.float32).reshape(-1)


def float32_to_int16(pcm: np.ndarray) -> np.ndarray:
    scaled = np.asarray(pcm, dtype=np.float32) * 32768.0
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """One whole clip; the output keeps the input's dtype (int16 or float32)."""
    if from_rate == to_rate:
        return pcm
    if pcm.dtype not in (np.int16, np.float32):
        pcm = pcm.astype(np.float32)
    if pcm.size == 0:
        return pcm.copy()
    return soxr.resample(pcm, from_rate, to_rate)


class StreamResampler:
    """Chunk-by-chunk conversion that keeps the filter state between chunks, so audio cut into
    pieces (TTS output) has no clicks at the joins. Call ``flush()`` after the last chunk."""

    def __init__(self, from_rate: int, to_rate: int, dtype=np.int16):
        self.identity = from_rate == to_rate
        self.dtype = np.dtype(dtype)
        self._stream = None if self.identity else soxr.ResampleStream(from_rate, to_rate, 1, dtype=self.dtype)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.asarray(pcm, dtype=self.dtype)
        return pcm if self._stream is None else self._stream.resample_chunk(pcm)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=self.dtype)
        return self._stream.resample_chunk(np.zeros(0, dtype=self.dtype), last=True)
