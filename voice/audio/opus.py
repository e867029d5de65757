"""Opus framing for the device link: decode what devices send, encode what they play.

libopus is called through opuslib's ctypes bindings, but straight into reused numpy buffers:
opuslib's high-level wrappers copy every frame through Python lists, which costs more than the
codec itself at these frame sizes.

The listener's decode (``OpusDecoder.decode_float``) asks libopus for float samples: two numpy steps
fewer a packet (cast and scale), each of which, beside a busy event loop, may wait for the GIL. The
call still releases the GIL, as ctypes calls do: a version that kept it made the VAD thread of the
listeners' cycles hold the GIL against the hot lane, and the asking device's first audio came later
(benchmarks/README.md, "The listeners step aside").
"""
from __future__ import annotations

import ctypes

import numpy as np
import opuslib.api.ctl as opus_ctl
import opuslib.api.decoder as opus_decoder
import opuslib.api.encoder as opus_encoder
from opuslib.api import c_float_pointer, c_int16_pointer
from opuslib.constants import APPLICATION_AUDIO, APPLICATION_VOIP, SIGNAL_VOICE

OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_FRAME_MS = (10, 20, 40, 60)
MAX_FRAME_MS = 120  # the longest a single Opus packet can hold
MAX_PACKET_BYTES = 4000  # libopus' recommended output buffer size
RESET_AFTER_ERRORS = 5
APPLICATIONS = {"voip": APPLICATION_VOIP, "audio": APPLICATION_AUDIO}


def _check_rate(sample_rate: int) -> None:
    if sample_rate not in OPUS_SAMPLE_RATES:
        raise ValueError(f"Opus supports sample rates {OPUS_SAMPLE_RATES}, not {sample_rate}")


class OpusDecoder:
    """One device's incoming stream. Never raises on bad input: a lost or corrupted packet
    becomes silence so one glitch cannot end a conversation."""

    def __init__(self, sample_rate: int = 16000, channels: int = 1):
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        self.channels = channels
        self.errors = 0
        self._consecutive_errors = 0
        self._max_samples = sample_rate * MAX_FRAME_MS // 1000
        self._last_samples = sample_rate * 60 // 1000
        # One output buffer per sample format, made on first use (a listener only ever decodes to
        # float: the int16 one would be ~4 KB per connection for nothing).
        self._buffers: dict[type, tuple[np.ndarray, object]] = {}
        self._state = opus_decoder.create_state(sample_rate, channels)

    def decode(self, packet: bytes) -> np.ndarray:
        return self._decode(packet, np.int16)

    def decode_float(self, packet: bytes) -> np.ndarray:
        """``decode`` as float32, full scale 1.0 (libopus does not clip float output)."""
        return self._decode(packet, np.float32)

    def _decode(self, packet: bytes, dtype: type) -> np.ndarray:
        buffer, pointer = self._buffer(dtype)
        samples = -1
        if packet:
            call = opus_decoder.libopus_decode if dtype is np.int16 else opus_decoder.libopus_decode_float
            samples = call(self._state, packet, len(packet), pointer, self._max_samples, 0)
        if samples < 0:
            return self._silence_for_error().astype(dtype, copy=False)
        self._consecutive_errors = 0
        if samples:
            self._last_samples = samples
        out = buffer[: samples * self.channels].copy()
        return out if self.channels == 1 else out.reshape(-1, self.channels)

    def _buffer(self, dtype: type) -> tuple[np.ndarray, object]:
        """Sized for the longest legal packet, so 20 ms and 60 ms frames both decode whole."""
        found = self._buffers.get(dtype)
        if found is None:
            buffer = np.zeros(self._max_samples * self.channels, dtype=dtype)
            found = self._buffers[dtype] = (buffer, buffer.ctypes.data_as(c_int16_pointer if dtype is np.int16 else c_float_pointer))
        return found

    def _silence_for_error(self) -> np.ndarray:
        self.errors += 1
        self._consecutive_errors += 1
        if self._consecutive_errors >= RESET_AFTER_ERRORS:
            # A run of errors may mean the decoder state itself is bad: start fresh.
            self._recreate()
        shape = (self._last_samples,) if self.channels == 1 else (self._last_samples, self.channels)
        return np.zeros(shape, dtype=np.int16)

    def _recreate(self) -> None:
        opus_decoder.destroy(self._state)
        self._state = opus_decoder.create_state(self.sample_rate, self.channels)
        self._consecutive_errors = 0

    def __del__(self):
        state = getattr(self, "_state", None)
        if state is not None:
            opus_decoder.destroy(state)
            self._state = None


class OpusEncoder:
    """Mono speech to fixed-length Opus packets. Devices schedule playback per packet, so every
    packet is exactly ``frame_ms`` long; PCM that does not fill a frame waits for the next call.

    "audio" with the voice signal hint is the default: at the same cost and size it keeps the
    waveform closer than "voip" (whose high-pass and emphasis suit microphones, not clean TTS)."""

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 60,
        bitrate: int = 24000,
        complexity: int = 5,
        application: str = "audio",
    ):
        _check_rate(sample_rate)
        if frame_ms not in OPUS_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {OPUS_FRAME_MS}, not {frame_ms}")
        if application not in APPLICATIONS:
            raise ValueError(f"application must be one of {sorted(APPLICATIONS)}, not {application!r}")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self._state = opus_encoder.create_state(sample_rate, 1, APPLICATIONS[application])
        opus_encoder.encoder_ctl(self._state, opus_ctl.set_bitrate, bitrate)
        opus_encoder.encoder_ctl(self._state, opus_ctl.set_complexity, complexity)
        opus_encoder.encoder_ctl(self._state, opus_ctl.set_signal, SIGNAL_VOICE)
        self._pending = np.zeros(0, dtype=np.int16)
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if self._pending.size:
            pcm = np.concatenate([self._pending, pcm])
        full = pcm.size - pcm.size % self.frame_samples
        packets = [self._encode_frame(pcm[i : i + self.frame_samples]) for i in range(0, full, self.frame_samples)]
        self._pending = pcm[full:].copy()
        return packets

    def flush(self) -> list[bytes]:
        """Encode what is left, padded with silence to a whole frame."""
        if not self._pending.size:
            return []
        frame = np.zeros(self.frame_samples, dtype=np.int16)
        frame[: self._pending.size] = self._pending
        self._pending = np.zeros(0, dtype=np.int16)
        return [self._encode_frame(frame)]

    def reset(self) -> None:
        """Drop pending PCM and codec history, e.g. when a reply is interrupted."""
        self._pending = np.zeros(0, dtype=np.int16)
        opus_encoder.encoder_ctl(self._state, opus_ctl.reset_state)

    def _encode_frame(self, frame: np.ndarray) -> bytes:
        frame = np.ascontiguousarray(frame)
        size = opus_encoder.libopus_encode(
            self._state, frame.ctypes.data_as(c_int16_pointer), self.frame_samples, self._out, MAX_PACKET_BYTES
        )
        if size < 0:
            raise RuntimeError(f"Opus encoder failed with code {size}")
        return ctypes.string_at(self._out, size)

    def __del__(self):
        state = getattr(self, "_state", None)
        if state is not None:
            opus_encoder.destroy(state)
            self._state = None


def encode_all(pcm: np.ndarray, sample_rate: int, frame_ms: int = 60) -> list[bytes]:
    """Whole clip to packets in one go (tests, simulated devices)."""
    encoder = OpusEncoder(sample_rate, frame_ms=frame_ms)
    return encoder.encode(pcm) + encoder.flush()
