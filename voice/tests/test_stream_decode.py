"""Streamed audio read as it arrives, however the network cuts it."""
import io
import wave

import numpy as np
import pytest

from voice.audio.stream_decode import WavFormatError, decode_pcm16, decode_wav
from voice.tests.fake_openai_server import streaming_wav, tone


def pieces(data: bytes, size: int):
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_pcm_split_inside_samples_loses_nothing():
    pcm = tone(0.5, 24000)
    out = np.concatenate(list(decode_pcm16(pieces(pcm.tobytes(), 7), 24000, 24000)))
    assert np.array_equal(out, pcm)


def test_a_streaming_wav_whose_header_arrives_in_bits_is_read_to_the_end():
    pcm = tone(0.5, 24000)
    out = np.concatenate(list(decode_wav(pieces(streaming_wav(pcm, 24000), 3), 24000)))
    assert np.array_equal(out, pcm)


def test_a_stereo_wav_is_mixed_down_and_resampled():
    left = tone(0.5, 16000)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.stack([left, left], axis=1).tobytes())
    out = np.concatenate(list(decode_wav(pieces(buffer.getvalue(), 1000), 24000)))
    assert abs(out.size - 12000) < 100 and np.abs(out).max() > 6000


def test_what_is_not_a_16_bit_wav_is_refused_clearly():
    with pytest.raises(WavFormatError, match="not a WAV"):
        list(decode_wav([b"ID3\x04" + bytes(100)], 24000))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(800))
    with pytest.raises(WavFormatError, match="not 16-bit PCM"):
        list(decode_wav([buffer.getvalue()], 24000))
    with pytest.raises(WavFormatError, match="ended inside its header"):
        list(decode_wav([b"RIFF\xff\xff\xff\xffWAVEfmt "], 24000))
