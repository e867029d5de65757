"""Speech that arrives over the network a piece at a time (MP3, streamed WAV, raw PCM), turned
into mono int16 PCM as it arrives, so a TTS provider hands on its first audio after the first
~100 ms of it rather than after the whole sentence.

After the first chunk (handed on at once), later ones are gathered to half a second: each chunk is
one item crossing the worker bridge, and fewer items keep the TTS thread free sooner.
"""
from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from voice.audio.resample import StreamResampler

LATER_CHUNK_SECONDS = 0.5
# The MP3 decoder asks for more input before every frame (~144 bytes at 48 kbit/s) and would block
# on the network if handed a whole message at once; fed a little at a time, it decodes everything
# received before it waits for the next message.
FEED_BYTES = 512


def gathered(chunks: Iterable[np.ndarray], sample_rate: int) -> Iterator[np.ndarray]:
    """The first non-empty chunk at once, the later ones joined to at least half a second (the
    remainder at the end)."""
    later = int(sample_rate * LATER_CHUNK_SECONDS)
    first, pending, size = True, [], 0
    for chunk in chunks:
        if not chunk.size:
            continue
        if first:
            first = False
            yield chunk
            continue
        pending.append(chunk)
        size += chunk.size
        if size >= later:
            yield np.concatenate(pending)
            pending, size = [], 0
    if pending:
        yield np.concatenate(pending)


class PullFeed:
    """Bytes for a pull decoder, fetched with ``fetch`` (the next piece, or None at the end) only
    when what was fetched before is used up. A failure of ``fetch`` ends the stream and is kept in
    ``error``: the decoder (C code calling back) cannot carry it, the caller raises it."""

    def __init__(self, fetch: Callable[[], bytes | None]):
        self._fetch = fetch
        self._buffer = bytearray()
        self.ended = False
        self.error: BaseException | None = None

    def read(self, wanted: int) -> bytes:
        while not self._buffer and not self.ended:
            try:
                data = self._fetch()
            except Exception as exc:  # noqa: BLE001 - raised by the decoding caller
                self.error, self.ended = exc, True
                break
            if data is None:
                self.ended = True
            else:
                self._buffer += data
        piece = bytes(self._buffer[: min(wanted, FEED_BYTES)])
        del self._buffer[: len(piece)]
        return piece


def iterator_fetch(pieces: Iterable[bytes]) -> Callable[[], bytes | None]:
    """``fetch`` for a ``PullFeed`` over an iterator of byte strings (an HTTP body)."""
    it = iter(pieces)
    return lambda: next(it, None)


def decode_mp3(feed: PullFeed, sample_rate: int) -> Iterator[np.ndarray]:
    """Mono int16 PCM at ``sample_rate`` (miniaudio resamples) decoded from ``feed`` as it
    arrives, gathered as ``gathered`` says. Raises the feed's error if fetching failed (also when
    that is why no MP3 could be found), else ``miniaudio.DecodeError`` for bytes that are not MP3."""
    import miniaudio

    decoder = None
    try:
        try:
            decoder = miniaudio.stream_any(
                _source_type()(feed), miniaudio.FileFormat.MP3, miniaudio.SampleFormat.SIGNED16,
                nchannels=1, sample_rate=sample_rate, frames_to_read=sample_rate // 10,
            )
        except miniaudio.DecodeError as exc:
            if feed.error is not None:
                raise feed.error from exc
            raise
        yield from gathered((np.frombuffer(samples, dtype=np.int16).copy() for samples in decoder), sample_rate)
        if feed.error is not None:
            raise feed.error
    finally:
        if decoder is not None:
            decoder.close()


@functools.cache
def _source_type():
    """miniaudio's source class, built on first use: miniaudio is imported only when MP3 arrives."""
    import miniaudio

    class Source(miniaudio.StreamableSource):
        """What the decoder pulls MP3 bytes from: a ``PullFeed``."""

        def __init__(self, feed: PullFeed):
            self.feed = feed

        def read(self, num_bytes: int) -> bytes:
            return self.feed.read(num_bytes)

    return Source


def decode_pcm16(pieces: Iterable[bytes], from_rate: int, to_rate: int) -> Iterator[np.ndarray]:
    """Raw little-endian int16 mono PCM at ``from_rate`` (OpenAI's ``pcm``: 24 kHz), cut wherever
    the network cut it (an odd byte waits for its partner), as int16 chunks at ``to_rate``."""
    resampler = StreamResampler(from_rate, to_rate)

    def chunks():
        odd = b""
        for piece in pieces:
            data = odd + piece
            whole = len(data) - len(data) % 2
            odd = data[whole:]
            if whole:
                yield resampler.process(np.frombuffer(data[:whole], dtype="<i2").astype(np.int16))
        yield resampler.flush()

    yield from gathered(chunks(), to_rate)


class WavFormatError(ValueError):
    pass


_RIFF = struct.Struct("<4sI4s")
_CHUNK = struct.Struct("<4sI")
_FMT = struct.Struct("<HHIIHH")  # format, channels, rate, byte rate, block align, bits
_MAX_HEADER = 64 * 1024  # bytes before the audio; more means this is not a WAV we can read


def decode_wav(pieces: Iterable[bytes], to_rate: int) -> Iterator[np.ndarray]:
    """A WAV (16-bit PCM, any rate, mono or more channels mixed down) read as it arrives, as int16
    mono chunks at ``to_rate``. Streaming servers cannot know the length when they start, so the
    sizes in the RIFF and ``data`` headers (0 or 0xFFFFFFFF) are not trusted: the audio runs to
    the end of the body. Raises ``WavFormatError`` for anything else."""
    it = iter(pieces)
    header = bytearray()
    for piece in it:
        header += piece
        parsed = _wav_header(bytes(header))
        if parsed is not None:
            break
        if len(header) > _MAX_HEADER:
            raise WavFormatError("no audio within the first 64 KiB of the WAV")
    else:
        parsed = _wav_header(bytes(header))
        if parsed is None:
            raise WavFormatError(f"the WAV ended inside its header ({len(header)} bytes)")
    rate, channels, audio_start = parsed
    block = 2 * channels
    resampler = StreamResampler(rate, to_rate)

    def body():
        yield bytes(header[audio_start:])
        yield from it

    def chunks():
        rest = b""
        for piece in body():
            data = rest + piece
            whole = len(data) - len(data) % block
            rest = data[whole:]
            if whole:
                frames = np.frombuffer(data[:whole], dtype="<i2").reshape(-1, channels)
                mono = frames[:, 0] if channels == 1 else frames.mean(axis=1)
                yield resampler.process(mono.astype(np.int16))
        yield resampler.flush()

    yield from gathered(chunks(), to_rate)


def _wav_header(data: bytes) -> tuple[int, int, int] | None:
    """(rate, channels, offset of the first audio byte) once the header is complete, None before."""
    if len(data) < _RIFF.size:
        return None
    riff, _, wave = _RIFF.unpack_from(data)
    if riff != b"RIFF" or wave != b"WAVE":
        raise WavFormatError(f"not a WAV (starts with {data[:12]!r})")
    offset, fmt = _RIFF.size, None
    while offset + _CHUNK.size <= len(data):
        name, size = _CHUNK.unpack_from(data, offset)
        offset += _CHUNK.size
        if name == b"data":
            if fmt is None:
                raise WavFormatError("the WAV's data comes before its format")
            return fmt[2], fmt[1], offset
        if offset + size > len(data):
            return None  # this chunk is not all here yet
        if name == b"fmt ":
            fmt = _FMT.unpack_from(data, offset)
            kind, channels, rate, _, _, bits = fmt
            if kind not in (1, 0xFFFE) or bits != 16 or channels < 1:
                raise WavFormatError(f"the WAV is not 16-bit PCM (format {kind}, {bits} bits, {channels} channels)")
        offset += size + size % 2
    return None
