"""What monitoring costs with 500 connected devices.

Starts a real Daphne, opens N real idle WebSocket device connections to it (handshake headers, no
hello: the hello timeout is raised so they stay open), then measures

* a Prometheus ``/metrics`` scrape served by that Daphne (HTTP round trip, many times), and
* a snapshot (collect + combine + database figures + one INSERT) as the scheduler/Celery task
  takes it. With REDIS_URL set the snapshot is taken in this process and combines the server's
  published figures through Redis (so it really sees the 500 devices); without Redis, this
  process raises its own connected_devices gauge to N so the stored row is the same size.

    python benchmarks/monitoring_cost.py --devices 500 --repeat 50
    REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/monitoring_cost.py --devices 500
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from voice.percentile import percentile  # noqa: E402  (after the path is set)


def summary(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(percentile(ordered, 0.95), 2),
            "max_ms": round(ordered[-1], 2)}


async def open_devices(ws_base: str, count: int) -> list:
    import websockets

    sockets = []
    for i in range(count):
        mac = f"02:00:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
        sockets.append(await websockets.connect(
            f"{ws_base}/xiaozhi/v1/", additional_headers={"Device-Id": mac, "Client-Id": f"bench-{i}",
                                                          "Protocol-Version": "1"}, open_timeout=30))
    return sockets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "monitoring_cost.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="xiaozhi-moncost-"))
    overrides = {"XIAOZHI_DATA_DIR": str(workdir), "SQLITE_PATH": str(workdir / "db.sqlite3"),
                 "XIAOZHI_PRELOAD_MODELS": "false", "XIAOZHI_HELLO_TIMEOUT_SECONDS": "3600",
                 "XIAOZHI_IDLE_TIMEOUT_SECONDS": "3600", "XIAOZHI_UNBOUND_SESSION_SECONDS": "3600",
                 "XIAOZHI_MONITORING_SCHEDULER": "off", "XIAOZHI_MONITORING_PUBLIC": "true",
                 "XIAOZHI_RATE_LIMIT_EXEMPT": "127.0.0.1",
                 "XIAOZHI_MONITORING_REDIS_PREFIX": f"bench-monitoring-{os.getpid()}:"}
    os.environ.update(overrides)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xiaozhi.settings")
    env = dict(os.environ)
    import django

    django.setup()
    import logging

    import httpx
    from django.conf import settings

    logging.getLogger("httpx").setLevel(logging.WARNING)

    from turn_latency import start_server

    process, base = start_server(env)
    loop = asyncio.new_event_loop()
    try:
        sockets = loop.run_until_complete(open_devices(base.replace("http", "ws", 1), args.devices))
        time.sleep(1)
        client = httpx.Client(base_url=base, timeout=30)
        text = client.get("/metrics").text
        served = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("xiaozhi_connected_devices "))
        scrape = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            body = client.get("/metrics").content
            scrape.append(1000 * (time.perf_counter() - t0))

        from monitoring import aggregate, snapshots
        from monitoring.models import MetricSnapshot
        from voice import live_stats

        if not settings.REDIS_URL:
            live_stats.gauge_add("connected_devices", args.devices)
        take, collect = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            combined = aggregate.current()
            collect.append(1000 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            snap = snapshots.take(combined)
            take.append(1000 * (time.perf_counter() - t0) + collect[-1])
        row_bytes = len(json.dumps(MetricSnapshot.objects.get(pk=snap.pk).metrics))
        import psutil

        server = psutil.Process(process.pid)
        report = {
            "devices_opened": len(sockets), "connected_devices_seen_by_server": served,
            "connected_devices_in_snapshot": snap.connected_devices,
            "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
            "redis": bool(settings.REDIS_URL),
            "metrics_scrape": {**summary(scrape), "bytes": len(body)},
            "snapshot_collect_and_combine": summary(collect),
            "snapshot_total_with_insert": {**summary(take), "row_json_bytes": row_bytes},
            "server_rss_mb": round(server.memory_info().rss / 2**20, 1),
        }
        MetricSnapshot.objects.all().delete()
        async def close_all():
            await asyncio.gather(*(s.close() for s in sockets))

        loop.run_until_complete(close_all())
    finally:
        process.terminate()
        process.wait(10)
        loop.close()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
