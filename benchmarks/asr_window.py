"""Whisper's window: the standard 30 s against one trimmed to the utterance, for speed and accuracy.

Whisper tiny.en spends most of a short utterance's ~0.35-0.5 s in the encoder over its fixed 30 s
window, although a device's turn is a few seconds. Trimming the window (faster-whisper's
``chunk_length``) makes the encoder's work follow the clip, but the model was trained on 30 s
windows, and a trimmed one can loop or invent words. This measures both on the same clips: a corpus
of commands, questions and fragments spoken by the bundled Piper voice at two speeds, sent through
the device's Opus codec (16 kHz, 60 ms frames) like a real uplink, plus room-noise clips that should
transcribe to nothing; half the clips end on their last syllable (push-to-talk released there). Word
error rate against the text spoken, and each call's time.

    python benchmarks/asr_window.py --output benchmarks/results/asr_window.json

Per variant: median and p95 call time, WER over the corpus, clips with a repeated phrase (a loop),
and words produced on noise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

CORPUS = [
    "What is the capital of France?",
    "Turn the volume up.",
    "Set the volume to thirty.",
    "Yes.",
    "No, thank you.",
    "Stop.",
    "What time is it?",
    "Tell me a joke about cats.",
    "How far away is the moon?",
    "Make the screen brighter please.",
    "What's the weather like today in London?",
    "Take a picture and tell me what you see.",
    "I would like to know the capital of France.",
    "Can you explain how a rainbow forms in the sky?",
    "Play some music.",
    "Good morning!",
    "Who wrote Romeo and Juliet?",
    "Turn it down a little.",
    "What is two plus two?",
    "Remind me what we talked about yesterday.",
    "Hello there, how are you doing this evening?",
    "Set brightness to eighty percent.",
    "Why is the sky blue?",
    "Goodbye.",
    "Can you hear me?",
    "What is the biggest animal in the ocean?",
    "Please speak a bit more slowly.",
    "How many legs does a spider have?",
    "Open the camera.",
    "Thanks, that's all for now.",
]
SPEEDS = (1.0, 1.25)  # Piper length_scale: the voice's own pace and a slower speaker


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    ref, hyp = normalise(reference), normalise(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def uplink(pcm: np.ndarray) -> np.ndarray:
    """Through the device's codec, as the server hears it."""
    from voice.audio.opus import OpusDecoder, OpusEncoder

    encoder, decoder = OpusEncoder(16000, 60), OpusDecoder(16000)
    frames = encoder.encode(pcm) + encoder.flush()
    return np.concatenate([decoder.decode(f) for f in frames])


def clips() -> list[tuple[str, np.ndarray]]:
    from piper.config import SynthesisConfig

    from voice.audio.resample import resample
    from voice.providers.tts.piper import VOLUME, PiperTTS

    tts = PiperTTS(noise_scale=0, noise_w_scale=0)
    out = []
    with tts._pool.borrow() as voice:
        for speed in SPEEDS:
            config = SynthesisConfig(volume=VOLUME, length_scale=speed, noise_scale=0, noise_w_scale=0)
            for text in CORPUS:
                pcm = np.concatenate([c.audio_int16_array for c in voice.synthesize(text, syn_config=config)])
                pcm = resample(pcm, tts.sample_rate, 16000)
                # The VAD's cut keeps a lead-in and a tail of silence (auto mode); push-to-talk may be
                # released on the last syllable (manual mode): the slower speaker's clips end there.
                lead = np.zeros(int(0.3 * 16000), np.int16)
                tail = lead if speed == 1.0 else lead[:0]
                out.append((text, uplink(np.concatenate([lead, pcm, tail]))))
    return out


def noise_clips(count: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(count):
        seconds = 1.0 + i * 0.5
        noise = rng.normal(0, 300 + 200 * i, int(seconds * 16000))
        hum = 400 * np.sin(2 * np.pi * 50 * np.arange(noise.size) / 16000)
        out.append(uplink(np.clip(noise + hum, -32768, 32767).astype(np.int16)))
    return out


def run_variant(asr, name: str, speech, noise) -> dict:
    from voice.providers.asr.whisper import looks_looped

    asr.retried = 0
    times, errors, words, loops, rows = [], 0, 0, 0, []
    for text, pcm in speech:
        started = time.perf_counter()
        heard = asr.transcribe(pcm)
        times.append(time.perf_counter() - started)
        e, n = word_errors(text, heard)
        errors, words, loops = errors + e, words + n, loops + looks_looped(heard)
        rows.append({"text": text, "heard": heard, "errors": e, "seconds": round(pcm.size / 16000, 2),
                     "ms": round(times[-1] * 1000, 1)})
    noise_words = []
    for pcm in noise:
        noise_words.append(asr.transcribe(pcm))
    times_ms = sorted(t * 1000 for t in times)
    return {
        "variant": name,
        "calls": len(times),
        "median_ms": round(statistics.median(times_ms), 1),
        "p95_ms": round(times_ms[int(0.95 * (len(times_ms) - 1))], 1),
        "wer": round(errors / max(words, 1), 4),
        "clips_with_errors": sum(1 for r in rows if r["errors"]),
        "loops": loops,  # in the answers returned (after any full-window retry)
        "full_window_retries": asr.retried,
        "noise_words": sum(len(normalise(t)) for t in noise_words),
        "noise_heard": noise_words,
        "clips": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the corpus per variant, interleaved")
    args = parser.parse_args()
    import django

    django.setup()
    from voice.providers.asr.whisper import WhisperASR

    speech, noise = clips(), noise_clips()
    variants = {"full_window": WhisperASR(window="full"), "trimmed_window": WhisperASR(window="trimmed")}
    for asr in variants.values():
        asr.warm()
    results: dict[str, list] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, asr in variants.items():
            results[name].append(run_variant(asr, name, speech, noise))
    report = {"clips": len(speech), "noise_clips": len(noise), "rounds": args.rounds,
              "load_average": os.getloadavg(), "variants": {}}
    for name, runs in results.items():
        last = runs[-1]
        all_ms = [c["ms"] for r in runs for c in r["clips"]]
        last["median_ms"] = round(statistics.median(all_ms), 1)
        report["variants"][name] = last
    print(f"{'variant':16} {'median ms':>9} {'p95 ms':>7} {'WER':>6} {'clips wrong':>11} {'loops':>5} {'noise words':>11}")
    for name, v in report["variants"].items():
        print(f"{name:16} {v['median_ms']:9} {v['p95_ms']:7} {v['wer']:6.3f} {v['clips_with_errors']:11} {v['loops']:5} {v['noise_words']:11}")
    if args.output:
        args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
