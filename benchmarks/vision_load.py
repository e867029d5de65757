"""Photo questions at once: N devices post a real JPEG to ``POST /xiaozhi/vision/`` together.

    ~/.cache/xiaozhi-server/venv/bin/python benchmarks/vision_load.py --devices 10 --max-concurrent 2 --queue-size 3

A real server (``python -m xiaozhi.server`` on a temporary SQLite, no models loaded) with the vision
provider pointed at a local OpenAI-compatible vision server (``loadtest/fake_vision.py``) that spends
``--delay`` seconds on each answer, as a remote vision model would. Each device boots through the
OTA, then all post their photo at the same moment, chunked, as the firmware does
(``loadtest/camera.py``). Reported: how many were answered and how many told "busy", each one's
time from its post to its answer, the order the vision server took the answered ones in, and the
``vllm`` service's figures from ``/api/performance/concurrency/``. Raw JSON in ``benchmarks/results/``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECRET = "vision-benchmark-secret"


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")
    os.environ["XIAOZHI_AUTH_SECRET"] = SECRET  # the tokens made here are the server's
    os.environ["XIAOZHI_PRELOAD_MODELS"] = "false"
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()


async def run(base: str, devices: int, jpeg: bytes) -> list[dict]:
    import httpx

    from devices.vision import issue_vision_token
    from devices.vision_views import BUSY
    from loadtest.camera import PhotoRefused, upload_photo

    ids = [(f"aa:bb:cc:30:{i // 256:02x}:{i % 256:02x}", f"bench-{i}") for i in range(devices)]
    async with httpx.AsyncClient(timeout=30) as client:
        for device_id, client_id in ids:
            response = await client.post(f"{base}/xiaozhi/ota/", json={}, headers={"Device-Id": device_id, "Client-Id": client_id})
            response.raise_for_status()

    async def one(index: int, device_id: str, client_id: str) -> dict:
        started = time.perf_counter()
        try:
            text = await upload_photo(f"{base}/xiaozhi/vision/", issue_vision_token(client_id, device_id), device_id,
                                      client_id, f"What do you see, device {index}?", jpeg, timeout=120)
            outcome = "busy" if text == BUSY else "answered"
        except PhotoRefused as exc:
            text, outcome = exc.text, f"refused {exc.status}"
        except Exception as exc:  # noqa: BLE001 - reported, a hang would show as a timeout here
            text, outcome = f"{type(exc).__name__}: {exc}", "failed"
        return {"device": index, "outcome": outcome, "seconds": round(time.perf_counter() - started, 3), "text": text}

    return await asyncio.gather(*(one(i, d, c) for i, (d, c) in enumerate(ids)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--queue-size", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the vision server spends on each answer")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    setup_django()
    import httpx

    from loadtest.camera import photo_jpeg
    from loadtest.fake_vision import FakeVisionServer
    from loadtest.server import local_server
    from voice.percentile import percentile

    jpeg = photo_jpeg()
    with FakeVisionServer(delay=args.delay) as vision:
        env = {"XIAOZHI_PRELOAD_MODELS": "false", "XIAOZHI_WORKER_BACKEND": "local", "XIAOZHI_AUTH_SECRET": SECRET,
               "XIAOZHI_MONITORING_SCHEDULER": "off", "XIAOZHI_VLLM_PROVIDER": "openai",
               "XIAOZHI_VLLM_BASE_URL": vision.url, "XIAOZHI_VLLM_MODEL": "fake-vision",
               "XIAOZHI_MONITORING_REDIS_PREFIX": f"xiaozhi:vision-bench-{os.getpid()}:",
               "XIAOZHI_PERF__SERVICES__VLLM__MAX_CONCURRENT": str(args.max_concurrent),
               "XIAOZHI_PERF__SERVICES__VLLM__QUEUE_SIZE": str(args.queue_size),
               "XIAOZHI_PERF__SERVICES__VLLM__TIMEOUT": str(max(20.0, args.delay * (args.devices + 2)))}
        with local_server("fake", env=env, startup_timeout=60) as base:
            results = asyncio.run(run(base, args.devices, jpeg))
            figures = httpx.get(f"{base}/api/performance/concurrency/", timeout=10).json()["services"]["vllm"]
        served = [s.question for s in vision.seen]
    answered = [r for r in results if r["outcome"] == "answered"]
    busy = [r for r in results if r["outcome"] == "busy"]

    def stat(rows):
        values = [r["seconds"] for r in rows]
        return {"count": len(values), "p50": round(percentile(values, 0.5), 3), "p95": round(percentile(values, 0.95), 3),
                "max": max(values)} if values else {"count": 0}

    report = {"config": vars(args), "jpeg_bytes": len(jpeg), "answered": stat(answered), "busy": stat(busy),
              "other": [r for r in results if r["outcome"] not in ("answered", "busy")],
              "served_order": served, "vllm_service": figures, "uploads": results}
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"vision_load-{args.devices}.json")
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"{args.devices} devices, vllm max_concurrent {args.max_concurrent}, queue {args.queue_size}, "
          f"{args.delay:g} s per answer: {len(answered)} answered (p50 {report['answered'].get('p50')} s, "
          f"max {report['answered'].get('max')} s), {len(busy)} busy (max {report['busy'].get('max')} s), "
          f"{len(report['other'])} other; wrote {output}")


if __name__ == "__main__":
    main()
