"""What the Edge TTS provider itself costs, against the local fake of the service (so the network
and Microsoft's synthesis time are left out): time to the first PCM chunk and to the whole
sentence for ~3 s of speech, i.e. private event loop + WebSocket + MP3 decoding. Also the LLM's
fail-fast path: a request while the circuit breaker is open versus one to a server that refuses
connections (with retries).

    ~/.cache/xiaozhi-server/venv/bin/python benchmarks/edge_tts_overhead.py [--runs 30]
"""
import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    import django

    django.setup()
    import numpy as np

    from voice.audio.resample import resample
    from voice.providers.errors import LLMError
    from voice.providers.llm.openai_compat import OpenAICompatibleLLM
    from voice.providers.remote import RetryPolicy
    from voice.providers.tts.edge import SAMPLE_RATE, EdgeTTS
    from voice.providers.tts.piper import PiperTTS
    from voice.tests.fake_edge import FakeEdgeServer, encode_mp3

    piper = PiperTTS(noise_scale=0.0, noise_w_scale=0.0)
    speech = resample(np.concatenate(list(piper.synthesize("The capital of France is Paris, a city on the Seine."))),
                      piper.sample_rate, SAMPLE_RATE)
    server = FakeEdgeServer(encode_mp3(speech)).start()
    tts = EdgeTTS(url=server.url)
    first, total = [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        chunks = tts.synthesize("Tell me about Paris.")
        next(chunks)
        first.append(time.perf_counter() - started)
        for _chunk in chunks:
            pass
        total.append(time.perf_counter() - started)
    server.stop()
    seconds = len(speech) / SAMPLE_RATE
    print(f"Edge TTS vs local fake, {seconds:.2f} s of speech, {args.runs} runs:")
    print(f"  first PCM chunk  median {statistics.median(first) * 1000:.1f} ms")
    print(f"  whole sentence   median {statistics.median(total) * 1000:.1f} ms "
          f"(real-time factor {statistics.median(total) / seconds:.3f})")

    def fail_ms(llm) -> float:
        started = time.perf_counter()
        try:
            list(llm.stream([{"role": "user", "content": "hi"}], threading.Event()))
        except LLMError:
            pass
        return (time.perf_counter() - started) * 1000

    down = OpenAICompatibleLLM("http://127.0.0.1:9/v1", timeout=5, policy=RetryPolicy(2, 0.25, breaker_failures=1000))
    refused = [fail_ms(down) for _ in range(5)]
    tripped = OpenAICompatibleLLM("http://127.0.0.1:9/v1", timeout=5, policy=RetryPolicy(2, 0.25, breaker_failures=1))
    fail_ms(tripped)
    open_ms = [fail_ms(tripped) for _ in range(args.runs)]
    print("LLM server refusing connections (2 retries, 0.25 s backoff):")
    print(f"  breaker closed   median {statistics.median(refused):.1f} ms to the error")
    print(f"  breaker open     median {statistics.median(open_ms):.3f} ms to the error")


if __name__ == "__main__":
    main()
