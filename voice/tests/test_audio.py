"""Opus framing and resampling: pure signal processing, no models."""
import numpy as np
import pytest

from voice.audio.opus import RESET_AFTER_ERRORS, OpusDecoder, OpusEncoder, encode_all
from voice.audio.resample import StreamResampler, float32_to_int16, int16_to_float32, resample


def voiced(sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    """A vowel-like test signal: harmonics of a gliding 140-180 Hz pitch under a syllable envelope."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    pitch = 160 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    signal = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)
    return (signal * envelope / np.abs(signal).max() * 0.5 * 32767).astype(np.int16)


def best_alignment(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 400) -> float:
    """Correlation after removing the codec's delay."""
    n = len(reference) - max_lag
    ref = reference[:n].astype(np.float64)
    return max(np.corrcoef(ref, decoded[lag : lag + n].astype(np.float64))[0, 1] for lag in range(max_lag))


@pytest.mark.parametrize("rate", [16000, 24000])
def test_opus_round_trip_keeps_the_waveform(rate):
    pcm = voiced(rate)
    packets = encode_all(pcm, rate)
    decoder = OpusDecoder(rate)
    decoded = np.concatenate([decoder.decode(p) for p in packets])
    assert decoded.dtype == np.int16
    assert len(decoded) == len(packets) * rate * 60 // 1000
    assert best_alignment(pcm, decoded) > 0.8
    assert decoder.errors == 0


def test_encoder_emits_exact_frames_and_keeps_the_remainder():
    encoder = OpusEncoder(16000, frame_ms=60)
    pcm = voiced(16000, 0.25)  # 4000 samples = 4 frames of 960 + 160 left over
    packets = encoder.encode(pcm[:1000]) + encoder.encode(pcm[1000:])
    assert len(packets) == 4
    assert len(encoder.flush()) == 1
    assert encoder.flush() == []
    decoder = OpusDecoder(16000)
    assert all(len(decoder.decode(p)) == 960 for p in packets)


def test_encode_all_pads_the_last_frame():
    assert len(encode_all(np.zeros(16000, np.int16), 16000)) == 17  # 1 s = 16.7 frames of 60 ms
    assert len(encode_all(np.zeros(960 * 3, np.int16), 16000)) == 3


def test_twenty_millisecond_frames_decode_to_their_own_length():
    packets = encode_all(voiced(16000, 0.2), 16000, frame_ms=20)
    decoder = OpusDecoder(16000)
    assert [len(decoder.decode(p)) for p in packets] == [320] * 10


@pytest.mark.parametrize("bad", [b"", b"\xff", b"\xff\xff\xff\xff"])
def test_a_corrupted_packet_becomes_silence_and_is_counted(bad):
    decoder = OpusDecoder(16000)
    decoder.decode(encode_all(voiced(16000, 0.02), 16000, frame_ms=20)[0])
    out = decoder.decode(bad)
    assert not out.any()
    assert len(out) == 320  # the last good frame's length
    assert decoder.errors == 1


def test_float_decoding_is_the_int16_decoding_scaled_and_fails_the_same_way():
    """The listener decodes to float (voice/audio/opus.py): the same samples as int16 / 32768."""
    packets = encode_all(voiced(16000, 0.5), 16000) + encode_all(voiced(16000, 0.1), 16000, frame_ms=20)
    as_int, as_float = OpusDecoder(16000), OpusDecoder(16000)
    for packet in packets:
        expected = as_int.decode(packet).astype(np.float32) / 32768.0
        got = as_float.decode_float(packet)
        assert got.dtype == np.float32 and len(got) == len(expected)
        assert np.abs(got - expected).max() <= 1 / 32768
    bad = as_float.decode_float(b"\xff\xff\xff\xff")
    assert bad.dtype == np.float32 and len(bad) == 320 and not bad.any() and as_float.errors == 1


def test_silence_defaults_to_sixty_ms_before_any_good_packet():
    decoder = OpusDecoder(16000)
    assert len(decoder.decode(b"")) == 960


def test_the_decoder_recovers_after_a_run_of_errors():
    decoder = OpusDecoder(16000)
    for _ in range(RESET_AFTER_ERRORS + 2):
        decoder.decode(b"\xff")
    assert decoder.errors == RESET_AFTER_ERRORS + 2
    good = encode_all(voiced(16000, 0.12), 16000)
    out = [decoder.decode(p) for p in good]
    assert all(len(frame) == 960 for frame in out)
    assert np.abs(out[-1]).max() > 1000
    assert decoder.errors == RESET_AFTER_ERRORS + 2


def test_tiny_dtx_packets_decode_to_near_silence():
    decoder = OpusDecoder(16000)
    out = decoder.decode(b"\x00")
    assert np.abs(out).max() < 500


def test_encoder_rejects_frames_opus_cannot_hold():
    with pytest.raises(ValueError):
        OpusEncoder(16000, frame_ms=30)
    with pytest.raises(ValueError):
        OpusEncoder(22050)


def test_resample_lengths_and_dtypes():
    pcm = voiced(16000)
    up = resample(pcm, 16000, 24000)
    assert up.dtype == np.int16 and len(up) == 24000
    down = resample(int16_to_float32(voiced(22050)), 22050, 16000)
    assert down.dtype == np.float32 and len(down) == 16000
    assert resample(pcm, 16000, 16000) is pcm
    assert len(resample(np.zeros(0, np.int16), 22050, 16000)) == 0


def test_stream_resampler_matches_the_whole_clip_length():
    pcm = voiced(22050)
    resampler = StreamResampler(22050, 24000)
    out = np.concatenate([resampler.process(chunk) for chunk in np.array_split(pcm, 7)] + [resampler.flush()])
    assert out.dtype == np.int16
    assert abs(len(out) - 24000) <= 1


def test_sample_format_helpers_round_trip():
    pcm = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    as_float = int16_to_float32(pcm)
    assert as_float.dtype == np.float32 and as_float.min() == -1.0
    assert (float32_to_int16(as_float) == pcm).all()
    assert float32_to_int16(np.array([2.0, -2.0], np.float32)).tolist() == [32767, -32768]
