"""What the Celery worker backend costs against in-process workers, on this machine.

1. Seam overhead, measured in this process against a real worker: the round trip of an empty call
   (``probe.sleep 0``), the worker-side wait (submit -> worker start, from the seam's figures), and
   the delivery latency of streamed items (worker yield -> here).
2. The same real model calls (Whisper on a 1.7 s question, Piper on one sentence) through each
   backend, one at a time.
3. TTFA (end of speech -> first audio) median/p95, stutter and errors with ``manage.py loadtest
   --spawn-server bundled`` at each device count, for each backend (a real Daphne; for celery also
   real workers, ``manage.py voice_worker asr llm tts`` unless ``--worker-layout shared``).

    python benchmarks/backends.py --devices 1,10 --turns 6
    REDIS_URL=redis://127.0.0.1:6379/3 python benchmarks/backends.py --devices 1 --turns 3 --skip-ttfa

Needs Redis (``REDIS_URL``, default db 3). Both backends use the Redis channel layer, so the
difference is the worker hop alone. Results go to benchmarks/results/backends.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voice.percentile import percentile  # noqa: E402  (after the path is set)


def summary(values_s) -> dict:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2), "p95_ms": round(percentile(ms, 0.95), 2)}


def start_worker(env: dict, prefix: str, log_path: Path, layout: str) -> subprocess.Popen:
    """The probe queue (for the seam figures) and the voice queues, laid out as production runs them:
    ``per-service`` = ``manage.py voice_worker asr llm tts`` (one process per service, concurrency =
    its max_concurrent); ``shared`` = one worker on every queue with 4 threads (for comparison)."""
    log = open(log_path, "w+")
    if layout == "shared":
        queues = ",".join(f"{prefix}.{k}" for k in ("asr", "llm", "tts", "test"))
        command, ready = [sys.executable, "-m", "celery", "-A", "xiaozhi", "worker", "-Q", queues, "--pool", "threads",
                          "--concurrency", "4", "-n", f"{prefix}@%h", "-I", "voice.tests.probe_operations",
                          "--loglevel", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"], 1
    else:
        from voice.management.commands.voice_worker import worker_argv

        probe = [sys.executable, "-m", "celery", "-A", "xiaozhi",
                 *worker_argv("test", concurrency=1, include=["voice.tests.probe_operations"], quiet_cluster=True)]
        voice = [sys.executable, "manage.py", "voice_worker", "asr", "llm", "tts", "--quiet-cluster"]
        command, ready = ["sh", "-c", f"{shlex.join(probe)} & exec {shlex.join(voice)}"], 4
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while log_path.read_text().count("ready.") < ready:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"worker did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.3)
    return process


async def seam_overhead(calls: int, items: int) -> dict:
    import django

    django.setup()
    import voice.tests.probe_operations  # noqa: F401
    from voice.conf import ServiceLimits
    from voice.workers import make_service

    out = {}
    for backend in ("local", "celery"):
        svc = make_service(ServiceLimits("test", 1, 64, 30.0, pool_size=1), backend=backend)
        await svc.call("probe.sleep", 0)  # first call: connections
        trips = []
        for _ in range(calls):
            started = time.perf_counter()
            await svc.call("probe.sleep", 0)
            trips.append(time.perf_counter() - started)
        delivery = []
        async for stamp in svc.stream("probe.stamps", items, 0.005):
            delivery.append(time.time() - stamp)
        out[backend] = {"empty_call": summary(trips), "stream_item_delivery": summary(delivery),
                        "avg_wait_ms (submit -> start)": svc.occupancy()["avg_wait_ms"]}
    return out


QUESTION = "What is the capital of France?"


async def model_calls(calls: int) -> dict:
    """The same real model work through each backend, one call at a time: what the hop costs a turn
    once the worker's own process (its threads, its copy of the model) is included."""
    import numpy as np

    from voice.conf import ServiceLimits
    from voice.providers import registry
    from voice.workers import make_service
    from voice.workers.operations import pcm_bytes

    piper = registry.get_tts("piper")
    from voice.audio.resample import resample

    speech = np.concatenate([np.asarray(c, dtype=np.int16) for c in piper.synthesize(QUESTION)])
    pcm = pcm_bytes(resample(speech, piper.sample_rate, 16000).astype(np.float32) / 32768.0)
    registry.preload(["asr", "llm", "tts"])  # as a server (or the worker) holds them: the local backend runs them here
    sentence = "The capital of France is Paris."
    out = {}
    for backend in ("local", "celery"):
        asr = make_service(ServiceLimits("asr", 1, 4, 30.0, pool_size=1), backend=backend)
        tts = make_service(ServiceLimits("tts", 1, 4, 30.0, pool_size=1), backend=backend)
        transcribe, first_audio, whole = [], [], []
        for i in range(calls + 1):
            started = time.perf_counter()
            text = await asr.call("transcribe", "whisper", pcm)
            spent = time.perf_counter() - started
            started = time.perf_counter()
            first = None
            async for _frames in tts.stream("tts_frames", "piper", sentence, None, 24000):
                first = first or time.perf_counter() - started
            if i:  # the first round opens connections
                transcribe.append(spent)
                first_audio.append(first)
                whole.append(time.perf_counter() - started)
        llm = make_service(ServiceLimits("llm", 1, 4, 30.0, pool_size=1), backend=backend)
        per_token, replies = [], []
        for i in range(calls + 1):
            started, deltas = time.perf_counter(), 0
            async for _delta in llm.stream("reply_stream", "smollm2", [{"role": "user", "content": QUESTION}]):
                deltas += 1
            if i:
                replies.append(time.perf_counter() - started)
                per_token.append((time.perf_counter() - started) / max(deltas, 1))
        out[backend] = {"text": text, "transcribe": summary(transcribe), "tts_first_frames": summary(first_audio),
                        "tts_whole_sentence": summary(whole), "llm_whole_reply": summary(replies),
                        "llm_per_delta": summary(per_token)}
    return out


def ttfa(env: dict, devices: int, turns: int, workdir: Path) -> dict:
    report = workdir / f"loadtest-{env['XIAOZHI_WORKER_BACKEND']}-{devices}.json"
    subprocess.run([sys.executable, "manage.py", "loadtest", "--spawn-server", "bundled", "--devices", str(devices),
                    "--turns", str(turns), "--mode", "manual", "--ramp-up", str(min(devices, 5)), "--report", str(report),
                    "--no-store", "--quiet"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=1800)
    run = json.loads(report.read_text())
    figures = run["figures"]
    ttfa_ms = figures["ttfa_ms"]
    return {"devices": devices, "turns": ttfa_ms["count"], "median_ms": ttfa_ms["p50"], "p95_ms": ttfa_ms["p95"],
            # where the time goes: end of speech -> stt (ASR), -> tts start (LLM's first sentence)
            "stt_median_ms": figures["stt_ms"]["p50"], "tts_start_median_ms": figures["tts_start_ms"]["p50"],
            "underruns_per_minute": run["audio"]["underruns_per_minute"], "errors": run["errors"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,10", help="comma-separated device counts")
    parser.add_argument("--turns", type=int, default=3, help="turns per device")
    parser.add_argument("--calls", type=int, default=50, help="empty calls for the seam overhead")
    parser.add_argument("--items", type=int, default=200, help="stream items for the delivery latency")
    parser.add_argument("--model-calls", type=int, default=10, help="real transcribe + TTS calls per backend (0: skip)")
    parser.add_argument("--worker-layout", choices=["per-service", "shared"], default="per-service")
    parser.add_argument("--skip-ttfa", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "backends.json"))
    args = parser.parse_args()

    prefix = f"voice-bench-{os.getpid()}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")
    os.environ["XIAOZHI_WORKER_QUEUE_PREFIX"] = prefix
    os.environ["XIAOZHI_MONITORING_SCHEDULER"] = "off"
    workdir = Path(tempfile.mkdtemp(prefix="backends-"))
    import django

    django.setup()  # settings (queue prefix, limits) for the workers' command lines
    worker = start_worker(dict(os.environ), prefix, workdir / "worker.log", args.worker_layout)
    results = {"cpus": os.cpu_count(), "load_1": os.getloadavg()[0], "worker_layout": args.worker_layout}
    try:
        results["seam"] = asyncio.run(seam_overhead(args.calls, args.items))
        if args.model_calls:
            results["model_calls"] = asyncio.run(model_calls(args.model_calls))
        if not args.skip_ttfa:
            results["ttfa"] = {backend: [ttfa(dict(os.environ, XIAOZHI_WORKER_BACKEND=backend), int(n), args.turns, workdir)
                                         for n in args.devices.split(",")]
                               for backend in ("local", "celery")}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # the probe worker and every voice worker
        worker.wait(30)
    results["load_1_after"] = os.getloadavg()[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
