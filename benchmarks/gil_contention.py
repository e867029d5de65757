"""What a busy event loop does to the VAD side's work through the GIL (issue 12, goal 4).

The server's event loop runs Python most of the time under load (~50 % of a core at 400 listening
devices). A VAD thread that releases the GIL, for a ctypes call or a numpy step on more than a few
hundred samples, must then wait for the loop to give it back, up to the switch interval (5 ms). This
script measures, in one process, with a thread that runs Python for 1 ms and waits 0.5 ms (like a
busy loop) and without it:

- one listeners' VAD cycle (``run_cycle``: 128 sessions x 2 noise packets, real Opus, real Silero,
  the energy gate), decoding as before (int16, then cast and scale) and as now (``decode_float``);
- the end-of-turn model (Smart Turn): its features (numpy) and its onnxruntime run;
- the same model beside listeners' cycles running back to back on another thread (as the VAD
  service's ordinary lane does at 400 devices), with the cycles stepping aside for it
  (``Urgency``, what ``VADBatcher.urgent`` does around the call) and without.

    python benchmarks/gil_contention.py --output benchmarks/results/gil-contention.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")


def busy_thread(stop: threading.Event) -> None:
    while not stop.is_set():
        until = time.perf_counter() + 0.001
        while time.perf_counter() < until:
            pass
        time.sleep(0.0005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    import django

    django.setup()
    import numpy as np

    from voice.audio.opus import encode_all
    from voice.pipeline.energy_gate import GateSettings
    from voice.pipeline.listener import Listener
    from voice.providers.turn.smart_turn import SmartTurn
    from voice.providers.vad.silero import SileroVAD
    from voice.workers.vad_batcher import Urgency, run_cycle

    vad = SileroVAD()
    packets = encode_all(np.random.default_rng(0).normal(0, 300, 16000 * 20).astype(np.int16), 16000)

    def listeners(old_decode: bool) -> list[Listener]:
        made = [Listener(vad, silence_ms=500, threshold=0.5, max_seconds=30, gate=GateSettings()) for _ in range(128)]
        if old_decode:  # what Listener.decode did before decode_float
            for listener in made:
                decoder = listener.decoder
                decoder.decode_float = lambda p, d=decoder: d.decode(p).astype(np.float32) / 32768.0
        return made

    def cycle_ms(sessions: list[Listener], position: list[int]) -> float:
        i = position[0] % (len(packets) - 2)
        position[0] += 2
        jobs = [(s, [(packets[i], 0.0), (packets[i + 1], 0.0)]) for s in sessions]
        started = time.perf_counter()
        run_cycle(jobs, 64)
        return (time.perf_counter() - started) * 1000

    model = SmartTurn()
    model.warm()
    speech = np.random.default_rng(1).normal(0, 0.1, 16000 * 2).astype(np.float32)

    def judge_ms() -> tuple[float, float]:
        started = time.perf_counter()
        features = model.features(speech)
        ran = time.perf_counter()
        model._session.run(None, {"input_features": features[None]})
        return (ran - started) * 1000, (time.perf_counter() - ran) * 1000

    def measure() -> dict:
        out = {}
        for name, old in (("cycle_ms_int16_decode", True), ("cycle_ms_float_decode", False)):
            sessions, position = listeners(old), [0]
            for _ in range(30):  # the energy gates learn the room first, as a listening server's have
                cycle_ms(sessions, position)
            out[name] = round(statistics.median(cycle_ms(sessions, position) for _ in range(args.repeats)), 2)
        judged = [judge_ms() for _ in range(max(5, args.repeats // 3))]
        out["smart_turn_features_ms"] = round(statistics.median(f for f, _ in judged), 2)
        out["smart_turn_run_ms"] = round(statistics.median(r for _, r in judged), 2)
        return out

    def beside_cycles(step_aside: bool) -> dict:
        sessions, position, urgency, done = listeners(False), [0], Urgency(), threading.Event()
        for _ in range(30):
            cycle_ms(sessions, position)

        def cycles() -> None:
            while not done.is_set():
                i = position[0] % (len(packets) - 2)
                position[0] += 2
                run_cycle([(s, [(packets[i], 0.0), (packets[i + 1], 0.0)]) for s in sessions], 64,
                          urgency=urgency, yield_for=0.2)

        worker = threading.Thread(target=cycles, daemon=True)
        worker.start()
        try:
            judged = []
            for _ in range(max(5, args.repeats // 3)):
                urgency.count += step_aside
                judged.append(judge_ms())
                urgency.count -= step_aside
                time.sleep(0.02)
        finally:
            done.set()
            worker.join()
        return {"smart_turn_features_ms": round(statistics.median(f for f, _ in judged), 2),
                "smart_turn_run_ms": round(statistics.median(r for _, r in judged), 2)}

    result = {"alone": measure(),
              "beside_listeners_cycles": beside_cycles(step_aside=False),
              "beside_listeners_cycles_stepping_aside": beside_cycles(step_aside=True)}
    stop = threading.Event()
    thread = threading.Thread(target=busy_thread, args=(stop,), daemon=True)
    thread.start()
    try:
        result["beside_a_busy_python_thread"] = measure()
    finally:
        stop.set()
        thread.join()
    result["command"] = " ".join(["benchmarks/gil_contention.py", *sys.argv[1:]])
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
