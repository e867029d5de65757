"""SenseVoice ASR latency through our provider at the real model's size, on this machine.

The real weights cannot be fetched here, so this builds SenseVoiceSmall's architecture (encoder
512 wide, 50 + 20 SAN-M blocks, as the released model) with random weights and a tiny vocabulary
(the CTC head is a small share of the work), loads it through ``SenseVoiceASR`` exactly as the
server does, and times ``transcribe`` on Piper speech. Random weights do the same arithmetic as
trained ones, so the timing holds; the text is gibberish.

    python benchmarks/sensevoice_latency.py --runs 10 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")

# SenseVoiceSmall's released encoder dimensions (public model card figures).
FULL_ENCODER = dict(output_size=512, attention_heads=4, linear_units=2048, num_blocks=50, tp_blocks=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text", default="What is the capital of France? Tell me please.")
    args = parser.parse_args()

    import django

    django.setup()
    import numpy as np
    import psutil

    from voice.audio.resample import int16_to_float32, resample
    from voice.providers.tts.piper import PiperTTS
    from voice.tests import tiny_sensevoice

    tts = PiperTTS(noise_scale=0.0, noise_w_scale=0.0)
    audio = np.concatenate(list(tts.synthesize(args.text)))
    speech = int16_to_float32(resample(audio, tts.sample_rate, 16000))

    with tempfile.TemporaryDirectory(prefix="sensevoice-bench-") as tmp:
        started = time.perf_counter()
        folder = tiny_sensevoice.build(Path(tmp) / "SenseVoiceSmall", encoder=FULL_ENCODER)
        build_s = time.perf_counter() - started  # includes funasr's import
        rss_before = psutil.Process().memory_info().rss

        from voice.providers.asr.sensevoice import SenseVoiceASR

        started = time.perf_counter()
        asr = SenseVoiceASR(str(folder), pool_size=1, threads=args.threads)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        asr.warm()
        warm_s = time.perf_counter() - started
        params = sum(p.numel() for p in asr._pool.instances[0].model.parameters())
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            asr.transcribe(speech)
            times.append(time.perf_counter() - started)
        rss_after = psutil.Process().memory_info().rss

    print(json.dumps({
        "clip_s": round(len(speech) / 16000, 2),
        "threads": args.threads,
        "params_m": round(params / 1e6, 1),
        "build_and_import_s": round(build_s, 2),
        "load_s": round(load_s, 2),
        "warm_s": round(warm_s, 2),
        "transcribe_median_s": round(statistics.median(times), 3),
        "transcribe_min_s": round(min(times), 3),
        "transcribe_max_s": round(max(times), 3),
        "rss_added_mb": round((rss_after - rss_before) / 2**20),
        "runs": args.runs,
    }, indent=2))


if __name__ == "__main__":
    main()
