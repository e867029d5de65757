"""What the Celery worker backend costs against in-process workers, on this machine.

1. Seam overhead, measured in this process against a real worker: the round trip of an empty call
   (``probe.sleep 0``), the worker-side wait (submit -> worker start, from the seam's figures), and
   the delivery latency of streamed items (worker yield -> here).
2. TTFA (end of speech -> first audio) median/p95 with ``manage.py loadtest --spawn-server bundled``
   at each device count, for each backend (a real Daphne; for celery also a real worker).

    python benchmarks/backends.py --devices 1,10 --turns 3
    REDIS_URL=redis://127.0.0.1:6379/3 python benchmarks/backends.py --devices 1 --turns 3 --skip-ttfa

Needs Redis (``REDIS_URL``, default db 3). Both backends use the Redis channel layer, so the
difference is the worker hop alone. Results go to benchmarks/results/backends.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values, q):
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(values_s) -> dict:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2), "p95_ms": round(percentile(ms, 0.95), 2)}


def start_worker(env: dict, prefix: str, log_path: Path) -> subprocess.Popen:
    queues = ",".join(f"{prefix}.{k}" for k in ("asr", "llm", "tts", "test"))
    log = open(log_path, "w+")
    process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "xiaozhi", "worker", "-Q", queues, "--pool", "threads",
                                "--concurrency", "4", "-n", f"{prefix}@%h", "-I", "voice.tests.probe_operations",
                                "--loglevel", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while "ready." not in log_path.read_text():
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
                        "avg_wait_ms (submit -> start)": svc.stats()["avg_wait_ms"]}
    return out


def ttfa(env: dict, devices: int, turns: int, workdir: Path) -> dict:
    report = workdir / f"loadtest-{env['XIAOZHI_WORKER_BACKEND']}-{devices}.json"
    subprocess.run([sys.executable, "manage.py", "loadtest", "--spawn-server", "bundled", "--devices", str(devices),
                    "--turns", str(turns), "--mode", "manual", "--ramp-up", str(min(devices, 5)), "--report", str(report),
                    "--no-store", "--quiet"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=1800)
    figures = json.loads(report.read_text())["figures"]
    ttfa_ms = figures["ttfa_ms"]
    return {"devices": devices, "turns": ttfa_ms["count"], "median_ms": ttfa_ms["p50"], "p95_ms": ttfa_ms["p95"],
            # where the time goes: end of speech -> stt (ASR), -> tts start (LLM's first sentence)
            "stt_median_ms": figures["stt_ms"]["p50"], "tts_start_median_ms": figures["tts_start_ms"]["p50"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,10", help="comma-separated device counts")
    parser.add_argument("--turns", type=int, default=3, help="turns per device")
    parser.add_argument("--calls", type=int, default=50, help="empty calls for the seam overhead")
    parser.add_argument("--items", type=int, default=200, help="stream items for the delivery latency")
    parser.add_argument("--skip-ttfa", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "backends.json"))
    args = parser.parse_args()

    prefix = f"voice-bench-{os.getpid()}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")
    os.environ["XIAOZHI_WORKER_QUEUE_PREFIX"] = prefix
    os.environ["XIAOZHI_MONITORING_SCHEDULER"] = "off"
    workdir = Path(tempfile.mkdtemp(prefix="backends-"))
    worker = start_worker(dict(os.environ), prefix, workdir / "worker.log")
    results = {"cpus": os.cpu_count(), "load_1": os.getloadavg()[0]}
    try:
        results["seam"] = asyncio.run(seam_overhead(args.calls, args.items))
        if not args.skip_ttfa:
            results["ttfa"] = {backend: [ttfa(dict(os.environ, XIAOZHI_WORKER_BACKEND=backend), int(n), args.turns, workdir)
                                         for n in args.devices.split(",")]
                               for backend in ("local", "celery")}
    finally:
        worker.terminate()
        worker.wait(20)
    results["load_1_after"] = os.getloadavg()[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
